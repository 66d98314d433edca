"""Gradio demo over dlcv.service, the app of the Hugging Face Space: `python gradio_app.py`.

Every button is an API endpoint (`api_name`), so `gradio_client.Client(url).predict(..., api_name="/faces")` does
what the button does. Weights come from the Hub model repos in $DLCV_HUB_REPOS (pulled once into the Hugging Face
cache); on a Space with no $DLCV_HUB_REPOS, from the `models:` list of the README's front matter; a model that
cannot be pulled falls back to checkpoints/ ($DLCV_CHECKPOINTS). A missing model returns a note, never an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
from pathlib import Path

import gradio as gr
import torch

from dlcv import checkpoint, service

FACE_DEFAULT = service.FACE_GAN_ORDER[0]
# the Streamlit app's upload limits: Gradio refuses bigger files before saving them, and uploads reach the handlers
# as unopened paths (upload_image), checked by service.open_upload_path before decoding
LAUNCH_OPTIONS = {"max_file_size": service.MAX_UPLOAD_BYTES}


def upload_image(**kwargs) -> gr.Image:
    """gr.Image(type="filepath") that hands the saved upload's path to the handler without opening it. Gradio's own
    preprocessing opens every upload with PIL, which raises (a server traceback, a bare "Error" in the page) on an
    image over Pillow's 179 M-pixel limit before the handler could refuse it in one line. (An instance override, not
    a subclass: Gradio writes a .pyi stub beside the module of every component subclass.)"""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    preprocess = component.preprocess

    def unopened(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return preprocess(payload)

    component.preprocess = unopened
    return component


README = Path(__file__).resolve().parent / "README.md"


def space_repos() -> list[str]:
    """$DLCV_HUB_REPOS; else, on a Hugging Face Space ($SPACE_ID is set there), the README's `models:` list."""
    repos = service.hub_repos()
    if repos or not os.environ.get("SPACE_ID") or not README.is_file():
        return repos
    from huggingface_hub import metadata_load

    return list((metadata_load(README) or {}).get("models") or [])


@functools.cache
def catalog() -> service.Catalog:
    """Found once per process, like st.cache_resource in the Streamlit app."""
    return service.catalog(repos=space_repos())


def _load(name: str):
    """(model, document, info), or raise ModelMissing / CheckpointError with the note to show."""
    info = catalog().get(name)
    model, document = service.load_cached(str(info.path))
    return model, document, info


def _file(data: bytes, name: str) -> str:
    """Write a download to a fresh temporary folder and return its path (Gradio serves it)."""
    path = Path(tempfile.mkdtemp(prefix="dlcv_")) / name
    path.write_bytes(data)
    return str(path)


def _gallery(images: torch.Tensor, captions: list[str] | None = None, scale: int = 1) -> list:
    pils = service.to_pil(images, scale)
    return list(zip(pils, captions)) if captions else pils


MISSING = (service.ModelMissing, checkpoint.CheckpointError)


def one_line_errors(fn):
    """A bad request (a value out of range, an unreadable upload) becomes a one-line gr.Error in the app and the
    API, without a traceback in the server log."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, KeyError, OverflowError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            if isinstance(err, TypeError) and None in (*args, *kwargs.values()):  # int(None): a cleared number box
                message = "a number box is empty; type a value into it (for example seed 0)"
            raise gr.Error(message, print_exception=False) from None
    return wrapper


def diffusion_defaults() -> dict:
    """The diffusion checkpoint's sampling defaults (sampler, steps, guidance) as a dict, or {}."""
    try:
        document = checkpoint.read_config(catalog().get(service.DIGIT_DIFFUSION).path)
        return dataclasses.asdict(service.sampling_defaults(document))
    except MISSING:
        return {}


def overview() -> tuple[list, list[list[str]], list[list]]:
    """The landing tab: one picture per family, the headline table, and every checkpoint."""
    pictures = [(str(path), caption) for caption, path in service.landing_figures()]
    headline = [[r["family"], r["model"], r["metric"], r["protocol"]] for r in service.headline(catalog())]
    models = [[m.name, m.family, m.architecture] for m in catalog().models.values()]
    return pictures, headline, models


def list_models() -> dict:
    """Every checkpoint the demo can use: architecture, source and scalar metrics; plus Hub notes."""
    return {"models": {m.name: {"architecture": m.architecture, "source": m.source, **service.scalar_metrics(m)}
                       for m in catalog().models.values()}, "notes": catalog().notes}


def faces(name: str, n: int, seed: int, truncation: float):
    """n faces from a face GAN or the VAE; truncation 0 = off (GAN), it is the temperature for the VAE."""
    try:
        model, document, info = _load(name)
    except MISSING as err:
        return [], None, str(err)
    n, seed = int(n), int(seed)
    if document["architecture"] == "vae":
        images = service.generate_faces(model, document, n, seed, temperature=float(truncation) or 1.0,
                                        prior=service.latent_prior(info.path))
    else:
        images = service.generate_faces(model, document, n, seed, float(truncation) or None)
    return _gallery(images), _file(service.zip_pngs(images, name), f"{name}_seed{seed}.zip"), f"{name}: {n} faces"


def smiling_pairs(n: int, seed: int, truncation: float):
    """Pairs from the Smiling ACGAN: the same z with label 0, then label 1; captions give P(smile)."""
    try:
        generator = _load(service.SMILING_GAN)[0]
    except MISSING as err:
        return [], None, str(err)
    neutral, smiling = service.smiling_pairs(generator, int(n), int(seed), float(truncation) or None)
    both = torch.stack([neutral, smiling], 1).flatten(0, 1)  # (n, 2, C, H, W) -> (2n, ...): pairs side by side
    captions = [f"{i // 2}: {'smiling' if i % 2 else 'neutral'}" for i in range(len(both))]
    try:
        scores = service.attribute_probability(_load(service.SMILING_CLASSIFIER)[0], both)
        captions = [f"{c}, P(smile) {p:.2f}" for c, p in zip(captions, scores)]
    except MISSING:
        pass
    return _gallery(both, captions), _file(service.zip_pngs(both, "pair"), f"smiling_pairs_seed{seed}.zip"), \
        "left of each pair: label 0; right: label 1 (Smiling), same z"


def interpolate(name: str, seed_a: int, seed_b: int, steps: int, mode: str):
    """Faces along slerp/lerp from seed A's first z to seed B's."""
    try:
        model, document, _ = _load(name)
    except MISSING as err:
        return [], str(err)
    images = service.interpolate(model, document, int(seed_a), int(seed_b), int(steps), mode)
    return _gallery(images), f"{name}: {mode} from seed {int(seed_a)} to seed {int(seed_b)}"


def vae_reconstruct(image):
    """The VAE's reconstruction decode(mu) of an uploaded face (converted to 64x64 RGB); without an upload, of
    method A's first face of seed 0 (the example)."""
    if image is None:
        try:
            generator, document, _ = _load(FACE_DEFAULT)
        except MISSING:
            return [], "upload a face first"
        image = service.to_pil(service.generate_faces(generator, document, 1, 0))[0]
    else:
        try:
            image = service.open_upload_path(image)
        except service.UploadError as err:
            return [], str(err)
    try:
        vae = _load(service.FACE_VAE)[0]
    except MISSING as err:
        return [], str(err)
    x, x_hat, note = service.reconstruct(vae, image)
    error = f"mean squared error {float(((x - x_hat) ** 2).mean()):.4f}"
    return _gallery(torch.cat([x, x_hat]), ["input", "reconstruction"], scale=2), "; ".join(filter(None, [note, error]))


def digits(name: str, digit: int, count: int, seed: int, guidance: float, sampler: str, steps: int,
           progress=gr.Progress()):
    """`count` images of `digit` (digit -1: one of each digit 0..9); for diffusion also the reverse process as an
    animated GIF."""
    try:
        model, document, _ = _load(name)
    except MISSING as err:
        return [], None, None, str(err)
    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), desc="denoising")

    try:
        images, frames = service.digits(model, document, None if int(digit) < 0 else int(digit), int(count),
                                        int(seed), float(guidance), sampler, int(steps), progress=report)
    except ValueError as err:  # e.g. more steps than the schedule has
        return [], None, None, str(err)
    gif = _file(service.reverse_gif(frames), f"digit_{int(digit)}_reverse.gif") if frames else None
    what = "digits 0-9" if int(digit) < 0 else f"digit {int(digit)}"
    note = f"{name}: {what}" + (f", {sampler}-{int(steps)}, w = {guidance}" if frames else "")
    return _gallery(images, scale=3), gif, _file(service.zip_pngs(images, f"digit_{int(digit)}"),
                                                 f"digit_{int(digit)}_seed{int(seed)}.zip"), note


def all_digits(name: str, seed: int, guidance: float, sampler: str, steps: int, progress=gr.Progress()):
    """One image of every digit 0..9, like `digits`."""
    return digits(name, -1, 10, seed, guidance, sampler, steps, progress)


def _pairs() -> dict:
    return catalog().uda_pairs()


def adapt(pair: str, image, example_digit: int):
    """The models of a UDA pair on one image (the upload, else a printed example digit): the image used, the
    probabilities as a bar chart (digit x method), and a table of each method's prediction."""
    if image is not None:
        try:
            image = service.open_upload_path(image)
        except service.UploadError as err:
            return None, None, str(err)
    methods = _pairs().get(pair)
    if not methods:
        return None, None, "no adaptation checkpoints (uda_<method>_<source>_to_<target>) for that pair yet"
    if image is None:  # a printed digit drawn like the target domain
        image = service.example_digit(int(example_digit), domain=service.pair_target(pair))
    models, notes = {}, []
    for method, info in methods.items():
        try:
            models[method] = _load(info.name)[0]
        except MISSING as err:
            notes.append(str(err))
    import pandas as pd

    probs, note = service.compare(models, image)
    result = {m: {label: round(float(q), 4) for label, q in zip(methods[m].labels, p)} for m, p in probs.items()}
    chart = pd.DataFrame([{"digit": label, "probability": q, "method": m}
                          for m, d in result.items() for label, q in d.items()])
    accuracy = {row["method"]: row["target test accuracy"] for row in service.uda_rows(methods)}
    table = ["| method | prediction | confidence | target test accuracy |", "| --- | --- | ---: | ---: |"] + \
        [f"| {m} | {max(d, key=d.get)} | {max(d.values()):.1%} | "
         f"{'' if accuracy.get(m) is None else format(accuracy[m], '.3f')} |" for m, d in result.items()]
    shown = image.convert("RGB").resize((112, 112), resample=0)
    return shown, chart, "\n".join(table + [""] + [n for n in [note, *notes] if n])


def tsne(pair: str):
    """The t-SNE figures of a pair (all of them if none names the pair)."""
    return [str(p) for p in service.tsne_figures(pair or None)]


def report() -> str:
    """The grading report, or where it was looked for."""
    path = service.report_path()
    return path.read_text() if path.is_file() else f"No grading report at `{path}` (set DLCV_REPORT)."


def build() -> gr.Blocks:
    """The Blocks app: one tab per Streamlit page, each button an API endpoint."""
    face_models = [m.name for m in catalog().face_generators()] or [FACE_DEFAULT]
    if service.FACE_VAE in catalog().models:
        face_models.append(service.FACE_VAE)
    pairs = list(_pairs()) or ["(none yet)"]
    sampling = diffusion_defaults()
    pictures, headline, models = overview()
    with gr.Blocks(title="dlcv demo") as demo:
        gr.Markdown("# dlcv\nImage generation and domain adaptation from a Deep Learning for Computer Vision "
                    "course, as software: **faces** from GANs and a VAE (64x64 CelebA, with a Smiling-conditioned "
                    "ACGAN), **digits** from a class-conditional diffusion model and an ACGAN (MNIST-M), and "
                    "**domain adaptation** of digit classifiers between MNIST, MNIST-M and USPS. Every model runs on "
                    "a CPU; image i of a run uses seed + i, so a seed gives the same images on the same machine and "
                    "precision.")
        with gr.Tab("Overview"):
            gr.Gallery(pictures, columns=4, height="auto", object_fit="contain", label="one picture per family",
                       allow_preview=True)
            gr.Dataframe(headline, headers=["family", "model", "metric", "protocol"], label="headline results",
                         interactive=False, wrap=True)
            with gr.Accordion(f"All {len(models)} checkpoints", open=False):
                gr.Dataframe(models, headers=["name", "family", "architecture"], interactive=False)
        with gr.Tab("Faces"):
            with gr.Row():
                name = gr.Dropdown(face_models, value=face_models[0], label="model", allow_custom_value=True)
                n = gr.Slider(1, 64, 16, step=1, label="faces")
                seed = gr.Number(0, precision=0, label="seed")
                truncation = gr.Slider(0, 3, 0, step=0.1, label="truncation (GAN, 0 = off) / temperature (VAE)")
            button = gr.Button("Generate", variant="primary")
            gallery = gr.Gallery(format="png", columns=8, height="auto", object_fit="contain", label="faces")
            archive, note = gr.File(label="download"), gr.Markdown()
            button.click(one_line_errors(faces), [name, n, seed, truncation], [gallery, archive, note], api_name="faces")
            gr.Markdown("### Smiling pairs (ACGAN)")
            with gr.Row():
                pairs_n = gr.Slider(1, 16, 8, step=1, label="pairs")
                pairs_seed = gr.Number(0, precision=0, label="seed")
                pairs_truncation = gr.Slider(0, 3, 0, step=0.1, label="truncation (0 = off)")
            button = gr.Button("Generate pairs")
            gallery = gr.Gallery(format="png", columns=8, label="pairs")
            archive, note = gr.File(label="download"), gr.Markdown()
            button.click(one_line_errors(smiling_pairs), [pairs_n, pairs_seed, pairs_truncation], [gallery, archive, note],
                         api_name="smiling_pairs")
            gr.Markdown("### Interpolation")
            with gr.Row():
                interp_name = gr.Dropdown(face_models + [service.SMILING_GAN], value=face_models[0], label="model",
                                          allow_custom_value=True)
                seed_a = gr.Number(0, precision=0, label="seed A")
                seed_b = gr.Number(1, precision=0, label="seed B")
                steps = gr.Slider(3, 16, 8, step=1, label="images")
                mode = gr.Radio(["slerp", "lerp"], value="slerp", label="path")
            button = gr.Button("Interpolate")
            gallery, note = gr.Gallery(format="png", columns=8, label="interpolation"), gr.Markdown()
            button.click(one_line_errors(interpolate), [interp_name, seed_a, seed_b, steps, mode], [gallery, note],
                         api_name="interpolate")
            gr.Markdown("### VAE reconstruction")
            upload = upload_image(label="a face (converted to 64x64 RGB; empty: method A's example face)",
                                  sources=["upload"])
            button = gr.Button("Reconstruct")
            gallery, note = gr.Gallery(format="png", columns=2, label="input / reconstruction"), gr.Markdown()
            button.click(one_line_errors(vae_reconstruct), [upload], [gallery, note], api_name="vae_reconstruct")
        with gr.Tab("Digits"):
            with gr.Row():
                name = gr.Dropdown([service.DIGIT_DIFFUSION, service.DIGIT_GAN], value=service.DIGIT_DIFFUSION,
                                   label="model")
                digit = gr.Dropdown(list(range(10)), value=3, label="digit")
                count = gr.Slider(1, 20, 10, step=1, label="count")
                seed = gr.Number(0, precision=0, label="seed")
            w, default_sampler = float(sampling.get("guidance", 4.0)), sampling.get("sampler", "dpm++2m")
            with gr.Row():
                guidance = gr.Slider(0, 8, w, step=0.5, label=f"guidance weight w (diffusion; {w:g} = the checkpoint's)")
                sampler = gr.Radio(list(service.SAMPLERS), value=default_sampler, label="sampler (diffusion)")
                steps = gr.Slider(5, 200, int(sampling.get("steps", 12)), step=1,
                                  label="steps (dpm++2m / ddim; the checkpoint's default preset)")
            with gr.Row():
                button = gr.Button("Generate", variant="primary")
                all_button = gr.Button("All ten digits")
            gallery = gr.Gallery(format="png", columns=10, height="auto", object_fit="contain", label="digits")
            animation = gr.Image(type="filepath", label="reverse process x_T -> x_0 (the whole batch)")
            archive, note = gr.File(label="download"), gr.Markdown()
            button.click(one_line_errors(digits), [name, digit, count, seed, guidance, sampler, steps],
                         [gallery, animation, archive, note], api_name="digits")
            all_button.click(one_line_errors(all_digits), [name, seed, guidance, sampler, steps],
                             [gallery, animation, archive, note], api_name="all_digits")
        with gr.Tab("Adaptation"):
            with gr.Row():
                pair = gr.Dropdown(pairs, value=pairs[0], label="source -> target")
                upload = upload_image(label="a target-domain digit (or leave empty)", sources=["upload"])
                example = gr.Dropdown(list(range(10)), value=7, label="example digit (used without an upload)")
            button = gr.Button("Classify", variant="primary")
            with gr.Row():
                shown = gr.Image(type="pil", label="the digit classified", scale=1, height=160)
                scores = gr.BarPlot(x="digit", y="probability", color="method", label="probabilities per method",
                                    scale=4, y_lim=[0, 1])
            note = gr.Markdown()
            button.click(one_line_errors(adapt), [pair, upload, example], [shown, scores, note], api_name="adapt")
            button = gr.Button("t-SNE figures")
            figures = gr.Gallery(format="png", columns=2, label="t-SNE")
            button.click(tsne, [pair], [figures], api_name="tsne")
        with gr.Tab("Results"):
            text = gr.Markdown()
            button = gr.Button("Show the grading report")
            button.click(report, [], [text], api_name="report")
            button = gr.Button("List the models")
            listing = gr.JSON()
            button.click(list_models, [], [listing], api_name="models")
    return demo


def main(argv: list[str] | None = None) -> None:
    """`python gradio_app.py [--host 0.0.0.0] [--port 7860]`."""
    parser = argparse.ArgumentParser(description="the dlcv Gradio demo")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    build().launch(server_name=args.host, server_port=args.port, **LAUNCH_OPTIONS)


if __name__ == "__main__":
    main()
