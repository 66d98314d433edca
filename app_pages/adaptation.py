"""Adaptation: one target-domain image through the source-only, DANN and improved models of a pair, side by side;
the pair's results table and its t-SNE figures."""

import pandas as pd
import streamlit as st

from app_pages import common
from dlcv import service

common.sidebar()
st.title("Domain adaptation")
st.caption("Digit classifiers trained on a labelled source domain and an unlabelled target domain.")
pairs = common.catalog().uda_pairs()

if not pairs:
    st.info("No adaptation checkpoints yet: the demo looks for folders named `uda_<method>_<source>_to_<target>` "
            f"(e.g. `uda_dann_mnistm_to_svhn`) in {service.checkpoints_root()}. Train them with "
            "`python -m dlcv train <uda preset> --out checkpoints/uda_<method>_<source>_to_<target>`.",
            icon=":material/info:")
    pair = None
else:
    pair = st.selectbox("source -> target", list(pairs))
    methods = pairs[pair]
    source_mode = st.radio("image", ["example", "upload"], horizontal=True,
                           help="an example is a printed digit drawn here in the target domain's style")
    if source_mode == "upload":
        image = common.upload_image("a target-domain digit", key="uda_upload")
    else:
        digit = st.selectbox("example digit", list(range(10)), index=7)
        image = service.example_digit(digit, domain=service.pair_target(pair))  # drawn like the target domain
    if image is not None:
        models = {}
        for method, info in methods.items():
            loaded = common.get_model(info.name)
            if loaded:
                models[method] = loaded[0]
        probs, note = service.compare(models, image)
        st.image(image.resize((112, 112)), caption=note or "used as is", width=112)
        for column, (method, p) in zip(st.columns(max(len(probs), 1)), probs.items()):
            labels = methods[method].labels
            column.markdown(f"**{method}**: {labels[int(p.argmax())]} ({p.max():.1%})")
            column.bar_chart(pd.DataFrame({"probability": p}, index=labels), height=220)
    st.subheader("Results")
    st.dataframe(pd.DataFrame(service.uda_rows(methods)), hide_index=True)

st.subheader("t-SNE of the features")
figures = service.tsne_figures(pair)
if figures:
    for figure in figures:
        st.image(str(figure), caption=figure.stem)
else:
    st.info(f"No t-SNE figures yet (looked for {service.figures_root()}/tsne_*.png).", icon=":material/info:")
