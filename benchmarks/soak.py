"""Soak check of both apps: `python benchmarks/soak.py [--requests 200] [--budget 60] [--checkpoints DIR]`.

Starts the Gradio app (gradio_app.py, a subprocess bound to 127.0.0.1 only) and sends `--requests` calls to each
of its endpoints through gradio_client; runs every Streamlit page `--requests` times with
streamlit.testing.v1.AppTest (the script run a browser session triggers, without HTTP). Each endpoint or page
stops early at `--budget` seconds. Prints, per endpoint and page, the requests served, errors, mean latency and
the resident memory (RSS) of the serving process before and after. Without --checkpoints it uses tiny models of
every kind the apps show (written to a temporary folder), which measures the apps, not the models' compute.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGES = ["app_pages/overview.py", "app_pages/faces.py", "app_pages/digits.py", "app_pages/adaptation.py",
         "app_pages/results.py"]


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process from /proc (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_checkpoints(root: Path) -> Path:
    """A checkpoints folder with a tiny model under every name the apps use, plus a t-SNE figure and a report."""
    import torch
    from PIL import Image

    from dlcv import checkpoint
    from dlcv.models import ARCHITECTURES, build_model
    from dlcv.models.classifier import ClassifierConfig
    from dlcv.models.gan import GeneratorConfig
    from dlcv.models.unet import UNetConfig

    def generator(size: int, classes: int = 0):
        return build_model("generator", GeneratorConfig(z_dim=8, image_size=size, width=4, num_classes=classes))

    ckpts = root / "checkpoints"
    torch.manual_seed(0)
    for name in ("dcgan_faces", "sngan_faces"):
        checkpoint.save(generator(64), ckpts / name)
    checkpoint.save(generator(64, 2), ckpts / "acgan_faces", {"run": {"data": {"attribute": "Smiling"}}})
    checkpoint.save(generator(28, 10), ckpts / "acgan_digits")
    checkpoint.save(build_model("classifier", ClassifierConfig(image_size=64, num_classes=2, width=4)),
                    ckpts / "smiling_classifier", {"run": {"data": {"attribute": "Smiling"}}})
    unet = build_model("unet", UNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(), dropout=0.0))
    checkpoint.save(unet, ckpts / "ddpm_digits", {
        "schedule": {"num_timesteps": 50, "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "sampling": {"sampler": "ddim", "steps": 5, "eta": 0.0, "guidance": 1.0}})
    for method in ("source_only", "dann", "improved"):
        checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), ckpts / f"uda_{method}_mnistm_to_usps")
    if "vae" in ARCHITECTURES:
        from dlcv.models.vae import VAEConfig

        checkpoint.save(build_model("vae", VAEConfig(latent_dim=8, width=4)), ckpts / "vae_faces")
    (root / "figures").mkdir(exist_ok=True)
    Image.new("RGB", (60, 40), "navy").save(root / "figures" / "tsne_mnistm_to_usps.png")
    (root / "report.md").write_text("# Grading report\n\n| task | score |\n| --- | --- |\n| hw2_1 | 1.0 |\n")
    return ckpts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak(name: str, call, requests: int, budget: float, pid: int | str) -> dict:
    """Call `call()` up to `requests` times or `budget` seconds; RSS of `pid` before and after."""
    before, errors, done, first_error = rss_mb(pid), 0, 0, ""
    start = time.perf_counter()
    while done < requests and time.perf_counter() - start < budget:
        try:
            call()
        except Exception as err:  # noqa: BLE001 - counted and reported, the soak goes on
            errors += 1
            first_error = first_error or f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        done += 1
    seconds = time.perf_counter() - start
    row = {"name": name, "requests": done, "errors": errors, "ms": 1000 * seconds / max(done, 1),
           "rss_before": before, "rss_after": rss_mb(pid), "first_error": first_error}
    print(f"{name:<28} {done:>5} {errors:>6} {row['ms']:>9.1f} {before:>10.1f} {row['rss_after']:>10.1f}"
          + (f"  ({first_error[:80]})" if first_error else ""), flush=True)
    return row


def soak_gradio(env: dict, requests: int, budget: float, upload: Path) -> list[dict]:
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, str(ROOT / "gradio_app.py")], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the Gradio app did not start: {server.stderr.read().decode()[-500:]}")
                time.sleep(1)
        image = handle_file(str(upload))
        calls = {
            "/faces": lambda: client.predict("sngan_faces", 4, 0, 0.0, api_name="/faces"),
            "/smiling_pairs": lambda: client.predict(2, 0, 0.0, api_name="/smiling_pairs"),
            "/interpolate": lambda: client.predict("dcgan_faces", 0, 1, 4, "slerp", api_name="/interpolate"),
            "/vae_reconstruct": lambda: client.predict(image, api_name="/vae_reconstruct"),
            "/digits": lambda: client.predict("ddpm_digits", 3, 2, 0, 1.0, "ddim", 5, api_name="/digits"),
            "/adapt": lambda: client.predict("mnistm -> usps", image, 7, api_name="/adapt"),
            "/tsne": lambda: client.predict("mnistm -> usps", api_name="/tsne"),
            "/report": lambda: client.predict(api_name="/report"),
            "/models": lambda: client.predict(api_name="/models"),
        }
        print(f"Gradio app on 127.0.0.1:{port} (pid {server.pid})")
        return [soak(f"gradio {name}", call, requests, budget, server.pid) for name, call in calls.items()]
    finally:
        server.terminate()
        server.wait(timeout=30)


def soak_streamlit(requests: int, budget: float) -> list[dict]:
    os.environ["STREAMLIT_LOGGER_LEVEL"] = "error"  # AppTest's bare-mode runs warn "missing ScriptRunContext"
    from streamlit import logger
    from streamlit.testing.v1 import AppTest

    logger.set_log_level("error")

    def quiet() -> None:  # loggers streamlit creates lazily, during the first runs, start at "warning"
        import logging

        for name in list(logging.root.manager.loggerDict):
            if name.startswith("streamlit"):
                logging.getLogger(name).setLevel(logging.ERROR)

    def run(page: str):
        def call():
            app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
            if page != PAGES[0]:
                app.switch_page(page).run()
            quiet()
            if app.exception:
                raise RuntimeError(app.exception[0].message)
        return call

    print(f"Streamlit pages through AppTest, in this process (pid {os.getpid()})")
    return [soak(f"streamlit {Path(page).stem}", run(page), requests, budget, "self") for page in PAGES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint and per page")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds at most per endpoint and per page")
    parser.add_argument("--checkpoints", default=None, help="checkpoints folder (default: tiny models)")
    parser.add_argument("--skip", choices=["gradio", "streamlit"], default=None)
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="dlcv_soak_") as tmp:
        tmp = Path(tmp)
        if args.checkpoints:
            os.environ["DLCV_CHECKPOINTS"] = args.checkpoints
        else:
            os.environ["DLCV_CHECKPOINTS"] = str(tiny_checkpoints(tmp))
            os.environ["DLCV_FIGURES"] = str(tmp / "figures")
            os.environ["DLCV_REPORT"] = str(tmp / "report.md")
        os.environ.pop("DLCV_HUB_REPOS", None)
        os.environ["HF_HUB_OFFLINE"] = "1"
        upload = tmp / "upload.png"
        Image.new("RGB", (64, 64), (200, 120, 90)).save(upload)
        print(f"{'endpoint / page':<28} {'reqs':>5} {'errors':>6} {'ms/req':>9} {'RSS0 MiB':>10} {'RSS1 MiB':>10}")
        rows = []
        if args.skip != "gradio":
            rows += soak_gradio(dict(os.environ), args.requests, args.budget, upload)
        if args.skip != "streamlit":
            rows += soak_streamlit(args.requests, args.budget)
    failed = sum(r["errors"] for r in rows)
    print(f"{len(rows)} endpoints/pages, {sum(r['requests'] for r in rows)} requests, {failed} errors")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
