"""What every demo page shares: the cached catalog and model loads, missing-model notes, image rows with their
downloads, and the image upload. Widgets only; the work is in dlcv.service."""

from __future__ import annotations

import streamlit as st
import torch
from PIL import Image

from dlcv import checkpoint, service


@st.cache_resource(show_spinner="Looking for checkpoints ...")
def _catalog(root: str, repos: str) -> service.Catalog:
    return service.catalog(root, repos.split())


def catalog() -> service.Catalog:
    """The checkpoints of $DLCV_CHECKPOINTS / checkpoints/ and $DLCV_HUB_REPOS, found once per process."""
    return _catalog(str(service.checkpoints_root()), " ".join(service.hub_repos()))


@st.cache_resource(show_spinner="Loading the model ...")
def load_model(path: str):
    """(model, config.json document), loaded once per process."""
    return service.load(path)


def get_model(name: str, quiet: bool = False):
    """(model, document, info) of checkpoint `name`, or None after showing a note that says how to get it."""
    try:
        info = catalog().get(name)
        model, document = load_model(str(info.path))
    except (service.ModelMissing, checkpoint.CheckpointError) as err:
        if not quiet:
            st.info(str(err), icon=":material/info:")
        return None
    return model, document, info


def sidebar() -> None:
    """Where the checkpoints come from, Hub notes, and a button to look again (new checkpoints appear)."""
    with st.sidebar:
        repos = service.hub_repos()
        st.caption(f"checkpoints: `{service.checkpoints_root()}`" + (f" + Hub: {', '.join(repos)}" if repos else ""))
        for note in catalog().notes:
            st.warning(note)
        if st.button("Reload checkpoints", help="look for new checkpoint folders (loaded models stay cached)"):
            _catalog.clear()
            st.rerun()


def seed_input(key: str, label: str = "seed", value: int = 0) -> int:
    return int(st.number_input(label, min_value=0, max_value=2**31 - 1, value=value, step=1, key=key))


def image_row(images: torch.Tensor, captions: list[str] | None = None, width: int = 128, scale: int = 1) -> None:
    """Show (N, C, H, W) images in [-1, 1] side by side."""
    st.image(service.to_pil(images, scale), caption=captions, width=width)


def downloads(images: torch.Tensor, stem: str, nrow: int = 8, key: str = "") -> None:
    """Download buttons for a generated set: one grid PNG and a zip of single PNGs."""
    left, right, _ = st.columns([1, 1, 3])
    left.download_button("Grid (PNG)", service.grid_png(images, nrow), f"{stem}.png", "image/png",
                         key=f"{key or stem}_png", icon=":material/download:")
    right.download_button("All images (zip)", service.zip_pngs(images, stem), f"{stem}.zip", "application/zip",
                          key=f"{key or stem}_zip", icon=":material/download:")


def upload_image(label: str, key: str) -> Image.Image | None:
    """An uploaded PNG/JPEG of at most 5 MB, or None; refusals are shown, never raised."""
    limit_mb = service.MAX_UPLOAD_BYTES // 2**20
    upload = st.file_uploader(f"{label} (PNG or JPEG, at most {limit_mb} MB)", type=["png", "jpg", "jpeg"],
                              key=key, max_upload_size=limit_mb)
    if upload is None:
        return None
    try:
        return service.open_upload(upload.getvalue())
    except service.UploadError as err:
        st.error(f"{err}.")
        return None


def progress_callback(bar, text: str):
    """A progress(done, total) function that moves a st.progress bar."""
    def update(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{text} {done}/{total}")
    return update
