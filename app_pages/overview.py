"""Landing page: what the project does, one picture per family, the headline results, then every checkpoint and a
classifier to try on an image."""

import pandas as pd
import streamlit as st

from app_pages import common
from dlcv import service

common.sidebar()
st.title("dlcv")
st.markdown("Image generation and domain adaptation from a Deep Learning for Computer Vision course, as software: "
            "**faces** from GANs and a VAE (64x64 CelebA, with a Smiling-conditioned ACGAN), **digits** from a "
            "class-conditional diffusion model and an ACGAN (MNIST-M), and **domain adaptation** of digit "
            "classifiers between MNIST, MNIST-M and USPS (source only, DANN and an improved method). Every model "
            "runs on a CPU; the pages in the menu generate and classify live.")

figures = service.landing_figures()
if figures:
    for column, (caption, path) in zip(st.columns(len(figures)), figures):
        column.image(str(path), caption=caption, width="stretch")

models = list(common.catalog().models.values())
if not models:
    st.info(f"No checkpoints found in {service.checkpoints_root()}. Train one with "
            "`python -m dlcv train classifier_digits --out checkpoints/classifier_digits_mnistm`.")
    st.stop()

rows = service.headline(common.catalog())
if rows:
    st.subheader("Headline results")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

with st.expander(f"All {len(models)} checkpoints"):
    st.dataframe(pd.DataFrame([{"name": m.name, "family": m.family, "architecture": m.architecture,
                                **service.scalar_metrics(m)} for m in models]).astype(str).replace("nan", ""), hide_index=True)

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
