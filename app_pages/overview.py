"""Overview: what is shipped (one row per checkpoint, its measured metrics), and a classifier to try on an image."""

import pandas as pd
import streamlit as st

from app_pages import common
from dlcv import service

common.sidebar()
st.title("dlcv")
st.caption("Image generation and domain adaptation from a Deep Learning for Computer Vision course, as software. "
           "Faces, Digits and Adaptation are in the menu.")

models = list(common.catalog().models.values())
if not models:
    st.info(f"No checkpoints found in {service.checkpoints_root()}. Train one with "
            "`python -m dlcv train classifier_digits --out checkpoints/classifier_digits_mnistm`.")
    st.stop()

st.subheader("Shipped checkpoints")
st.dataframe(pd.DataFrame([{"name": m.name, "family": m.family, "architecture": m.architecture,
                            **service.scalar_metrics(m)} for m in models]), hide_index=True)

classifiers = [m for m in models if m.architecture == "classifier"]
if classifiers:
    st.subheader("Classify an image")
    choice = st.selectbox("model", [m.name for m in classifiers])
    info = next(m for m in classifiers if m.name == choice)
    image = common.upload_image("an image", key="overview_upload")
    if image is not None:
        loaded = common.get_model(info.name)
        if loaded:
            probs, note = service.classify(loaded[0], image)
            left, right = st.columns([1, 3])
            left.image(image, caption=note or "used as is", width=140)
            right.bar_chart(pd.DataFrame({"probability": probs}, index=info.labels))
            right.write(f"prediction: **{info.labels[int(probs.argmax())]}** ({probs.max():.1%})")
