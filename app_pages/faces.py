"""Faces: GAN method A / B side by side, an interpolation between two seeds, the VAE (samples and the
reconstruction of an uploaded face), and ACGAN smiling pairs scored by the Smiling classifier."""

import streamlit as st
import torch

from app_pages import common
from dlcv import service

common.sidebar()
st.title("Faces")
st.caption("64x64 CelebA faces. Image i of a run uses seed + i, so a seed gives the same faces on the same machine "
           "and precision.")
catalog = common.catalog()
state = st.session_state
gan_tab, interp_tab, vae_tab, smile_tab = st.tabs(["GAN A / B", "Interpolation", "VAE", "Smiling (ACGAN)"])

with gan_tab:
    generators = catalog.face_generators()
    for name in service.FACE_GAN_ORDER[:2]:  # method A and B are expected; say so when one is missing
        if name not in catalog.models:
            st.info(service.missing_note(name), icon=":material/info:")
    if generators:
        with st.form("faces_gan"):
            names = st.multiselect("generators", [g.name for g in generators],
                                   default=[g.name for g in generators[:2]])
            left, mid, right = st.columns(3)
            n = left.slider("faces", 1, 64, 16)
            with mid:
                seed = common.seed_input("faces_gan_seed")
            with right:
                truncation = st.slider("truncation (0 = off)", 0.0, 3.0, 0.0, 0.1,
                                       help="resample |z| entries above this (Brock et al. 2019)")
            go = st.form_submit_button("Generate", type="primary")
        if go:
            bar, results = st.progress(0.0, text="generating"), {}
            for i, name in enumerate(names):
                loaded = common.get_model(name)
                if loaded:
                    results[name] = service.generate_faces(loaded[0], loaded[1], n, seed, truncation or None)
                bar.progress((i + 1) / max(len(names), 1), text=f"generated {name}")
            bar.empty()
            state["faces_gan_result"] = results
        results = state.get("faces_gan_result")
        if not results:
            st.caption("Pick the generators and press Generate.")
        for name, images in (results or {}).items():
            st.markdown(f"**{name}**")
            common.image_row(images, width=128)
            common.downloads(images, name, key=f"faces_{name}")

with interp_tab:
    choices = [g.name for g in catalog.face_generators()] + \
        [n for n in (service.SMILING_GAN, service.FACE_VAE) if n in catalog.models]
    if not choices:
        st.info("Interpolation needs a face GAN or the VAE; " + service.missing_note("dcgan_faces"),
                icon=":material/info:")
    else:
        with st.form("faces_interp"):
            name = st.selectbox("model", choices)
            left, mid, right, last = st.columns(4)
            with left:
                seed_a = common.seed_input("interp_a", "seed A", 0)
            with mid:
                seed_b = common.seed_input("interp_b", "seed B", 1)
            steps = right.slider("images", 3, 16, 8)
            mode = last.radio("path", ["slerp", "lerp"], horizontal=True)
            go = st.form_submit_button("Interpolate", type="primary")
        if go:
            loaded = common.get_model(name)
            if loaded:
                images = service.interpolate(loaded[0], loaded[1], seed_a, seed_b, steps, mode)
                state["faces_interp_result"] = (name, images)
        if "faces_interp_result" in state:
            name, images = state["faces_interp_result"]
            st.markdown(f"**{name}**: z of seed A's first face to seed B's")
            common.image_row(images, width=128)
            common.downloads(images, f"{name}_interpolation", nrow=len(images), key="interp")

with vae_tab:
    loaded = common.get_model(service.FACE_VAE)
    if loaded:
        vae, document, info = loaded
        prior = service.latent_prior(info.path)
        with st.form("faces_vae"):
            left, mid, right = st.columns(3)
            n = left.slider("samples", 1, 64, 16, key="vae_n")
            with mid:
                seed = common.seed_input("vae_seed")
            temperature = right.slider("temperature", 0.1, 1.5, 1.0, 0.05,
                                       help="z = mean + temperature * L e, e ~ N(0, I): the Gaussian fitted to the "
                                            "training latents" if prior else "z ~ N(0, temperature^2 I)")
            go = st.form_submit_button("Generate", type="primary")
        if go:
            state["faces_vae_result"] = service.generate_faces(vae, document, n, seed, temperature=temperature,
                                                                     prior=prior)
        if "faces_vae_result" in state:
            common.image_row(state["faces_vae_result"], width=128)
            common.downloads(state["faces_vae_result"], "vae_faces", key="vae")
        st.subheader("Reconstruct a face")
        source = st.radio("face", ["example", "upload"], horizontal=True, key="vae_source",
                          help="the example is method A's first face of seed 0 (no upload needed)")
        if source == "upload":
            image = common.upload_image("a face", key="vae_upload")
        else:
            example = common.get_model(service.FACE_GAN_ORDER[0], quiet=True)
            image = service.to_pil(service.generate_faces(example[0], example[1], 1, 0))[0] if example else None
            if image is None:
                st.caption("No example face: " + service.missing_note(service.FACE_GAN_ORDER[0]))
        if image is not None:
            x, x_hat, note = service.reconstruct(vae, image)
            pair = torch.cat([x, x_hat])
            common.image_row(pair, ["input", "reconstruction"], width=160)
            error = f"mean squared error {float(((x - x_hat) ** 2).mean()):.4f} (in [-1, 1])"
            st.caption(f"{note}; {error}" if note else error)
            common.downloads(pair, "vae_reconstruction", nrow=2, key="vae_rec")

with smile_tab:
    loaded = common.get_model(service.SMILING_GAN)
    if loaded:
        generator = loaded[0]
        with st.form("faces_smile"):
            left, mid, right = st.columns(3)
            n = left.slider("pairs", 1, 16, 8)
            with mid:
                seed = common.seed_input("smile_seed")
            truncation = right.slider("truncation (0 = off)", 0.0, 3.0, 0.0, 0.1, key="smile_trunc")
            go = st.form_submit_button("Generate", type="primary")
        if go:
            state["faces_smile_result"] = service.smiling_pairs(generator, n, seed, truncation or None)
        if "faces_smile_result" in state:
            neutral, smiling = state["faces_smile_result"]
            scorer = common.get_model(service.SMILING_CLASSIFIER, quiet=True)
            for title, images in (("label 0 (not smiling)", neutral), ("label 1 (Smiling), same z", smiling)):
                captions = None
                if scorer:
                    captions = [f"P(smile) {p:.2f}" for p in service.attribute_probability(scorer[0], images)]
                st.markdown(f"**{title}**")
                common.image_row(images, captions, width=128)
            if not scorer:
                st.caption(service.missing_note(service.SMILING_CLASSIFIER))
            both = torch.cat([neutral, smiling])
            common.downloads(both, "smiling_pairs", nrow=len(neutral), key="smile")
