"""Digits: the class-conditional diffusion model (guidance, sampler, steps, and the reverse process x_T -> x_0 as a
scrubbable frame, a strip and an animation) and the ACGAN."""

import streamlit as st
import torch

from app_pages import common
from dlcv import service

common.sidebar()
st.title("Digits")
st.caption("28x28 MNIST-M digits. Image i of a run uses seed + i, drawn on the CPU.")
state = st.session_state
diffusion_tab, gan_tab = st.tabs(["Diffusion", "ACGAN"])

with diffusion_tab:
    loaded = common.get_model(service.DIGIT_DIFFUSION)
    if loaded:
        model, document, _ = loaded
        defaults = service.sampling_defaults(document)
        with st.form("digits_diffusion"):
            left, mid, right = st.columns(3)
            digit = left.selectbox("digit", list(range(10)), index=3)
            count = mid.slider("count", 1, 20, 10, key="ddpm_count")
            with right:
                seed = common.seed_input("ddpm_seed")
            left, mid, right = st.columns(3)
            guidance = left.slider("guidance weight w", 0.0, 8.0, float(defaults.guidance), 0.5,
                                   key="ddpm_guidance",
                                   help="classifier-free guidance: eps = (1 + w) eps(x, y) - w eps(x); 0 = none")
            samplers = list(service.SAMPLERS)
            default_sampler = defaults.sampler
            sampler = mid.radio("sampler", samplers, horizontal=True,
                                index=samplers.index(default_sampler) if default_sampler in samplers else 0,
                                help="dpm++2m: DPM-Solver++(2M), fewest steps; ddim: Song et al. 2021; "
                                     f"ddpm runs all {document['schedule']['num_timesteps']} steps (slow on a CPU)")
            T = document["schedule"]["num_timesteps"]
            steps = right.slider("steps (dpm++2m / ddim)", min(5, T), min(200, T),
                                 min(max(int(defaults.steps), 5), T), key="ddpm_steps",
                                 help="the checkpoint's default is preset")
            left, right, _ = st.columns([1, 1, 4])
            go = left.form_submit_button("Generate", type="primary")
            all_ten = right.form_submit_button("All ten digits", help="one image of each digit 0..9")
        if go or all_ten:
            digit = None if all_ten else digit
            bar = st.progress(0.0, text="denoising")
            images, frames = service.digits(model, document, digit, count, seed, guidance, sampler, steps,
                                            progress=common.progress_callback(bar, "denoising"))
            bar.empty()
            state["digits_diffusion_result"] = dict(images=images, frames=frames, digit=digit, sampler=sampler,
                                             steps=steps, guidance=guidance)
        result = state.get("digits_diffusion_result")
        if not result:
            st.caption("Choose a digit and press Generate.")
        else:
            images, frames = result["images"], result["frames"]
            label = f"{result['sampler'].upper()}" + (f"-{result['steps']}" if result["sampler"] != "ddpm" else "")
            what = "digits 0-9" if result["digit"] is None else f"digit {result['digit']}"
            st.markdown(f"**{what}**, {label}, w = {result['guidance']}")
            common.image_row(images, width=128, scale=5)
            common.downloads(images, f"digit_{result['digit'] if result['digit'] is not None else 'all'}", nrow=10, key="ddpm")
            st.subheader("Reverse process")
            names = [f"t={t}" if t >= 0 else "x0" for t, _ in frames]
            shown = st.select_slider("step (from pure noise x_T to the digit x_0)", names, value=names[0],
                                     key="ddpm_frame")
            common.image_row(dict(zip(names, (x for _, x in frames)))[shown], width=128, scale=5)
            strip = [frames[round(i * (len(frames) - 1) / 7)] for i in range(8)]  # 8 evenly spaced, x_T ... x_0
            st.markdown("first image from x_T to x_0")
            common.image_row(torch.stack([x[0] for _, x in strip]),
                             [f"t={t}" if t >= 0 else "x0" for t, _ in strip], width=128, scale=5)
            gif = service.reverse_gif(frames)
            st.image(gif, caption="the whole batch, x_T -> x_0", width=min(84 * len(images), 840))
            st.download_button("Animation (GIF)", gif, f"digit_{result['digit'] if result['digit'] is not None else 'all'}_reverse.gif", "image/gif",
                               key="ddpm_gif", icon=":material/download:")

with gan_tab:
    loaded = common.get_model(service.DIGIT_GAN)
    if loaded:
        model, document, info = loaded
        accuracy = info.metrics.get("digit_accuracy")
        if accuracy is not None:
            st.caption(f"course-classifier accuracy of this checkpoint: {accuracy}")
        with st.form("digits_gan"):
            left, mid, right = st.columns(3)
            digit = left.selectbox("digit", list(range(10)), index=3, key="gan_digit")
            count = mid.slider("count", 1, 50, 10, key="gan_count")
            with right:
                seed = common.seed_input("gan_seed")
            go = st.form_submit_button("Generate", type="primary")
        if go:
            state["digits_gan_result"] = (digit, service.digits(model, document, digit, count, seed)[0])
        if "digits_gan_result" in state:
            digit, images = state["digits_gan_result"]
            common.image_row(images, width=128, scale=5)
            common.downloads(images, f"acgan_digit_{digit}", nrow=10, key="acgan")
        else:
            st.caption("Choose a digit and press Generate.")
