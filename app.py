"""Streamlit demo over dlcv.service: the shipped checkpoints, and a classifier you can feed an image."""

import io

import pandas as pd
import streamlit as st
from PIL import Image, UnidentifiedImageError

from dlcv import service

MAX_UPLOAD_BYTES = 5 * 1024 * 1024

st.set_page_config(page_title="dlcv demo", layout="wide")


@st.cache_resource
def load_model(path: str):
    return service.load(path)


st.title("dlcv")
st.caption("Image generation and domain adaptation from a Deep Learning for Computer Vision course, as software.")

models = service.list_models()
if not models:
    st.info(f"No checkpoints found in {service.checkpoints_root()}. Train one with "
            "`python -m dlcv train classifier_digits --out checkpoints/classifier_digits_mnistm`.")
    st.stop()

st.subheader("Shipped checkpoints")
scalar = (int, float, str)  # nested metrics (per-class tables) are in RESULTS.md, not in this overview
st.dataframe(pd.DataFrame([{"name": m.name, "family": m.family, "architecture": m.architecture,
                            **{k: v for k, v in m.metrics.items() if isinstance(v, scalar)}} for m in models]),
             hide_index=True)

classifiers = [m for m in models if m.architecture == "classifier"]
if classifiers:
    st.subheader("Classify an image")
    choice = st.selectbox("model", [m.name for m in classifiers])
    info = next(m for m in classifiers if m.name == choice)
    upload = st.file_uploader("an image (PNG or JPEG, at most 5 MB)", type=["png", "jpg", "jpeg"])
    if upload is not None:
        data = upload.getvalue()
        if len(data) > MAX_UPLOAD_BYTES:
            st.error("That file is larger than 5 MB; upload a smaller image.")
            st.stop()
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError):
            st.error("That file is not a readable image; upload a PNG or JPEG.")
            st.stop()
        model, _ = load_model(str(info.path))
        probs, note = service.classify(model, image)
        left, right = st.columns([1, 3])
        left.image(image, caption=note or "used as is", width=140)
        right.bar_chart(pd.DataFrame({"probability": probs}, index=info.labels))
        right.write(f"prediction: **{info.labels[int(probs.argmax())]}** ({probs.max():.1%})")
