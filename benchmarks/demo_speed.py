"""Demo speed on this machine's CPU: time to first render of each Streamlit page (cold: the first visit, which
loads the models; warm: a later visit, models cached by st.cache_resource), and the time to generate 16 faces and
10 digits (DDIM-25). Targets: page ready <= 3 s once models are cached, 16 faces <= 1 s, 10 digits
<= 3 s.

    python benchmarks/demo_speed.py                 # the shipped checkpoints/ ($DLCV_CHECKPOINTS)
    python benchmarks/demo_speed.py --threads 1     # one core
    python benchmarks/demo_speed.py --empty-cache   # as on a fresh machine: first calls include the precision probe

Page times come from streamlit.testing's AppTest: the server-side run of the page script, which is what the
browser waits for (plus a websocket round trip). A face GAN missing from the checkpoints is timed as a randomly
initialised generator of its preset's architecture (same cost), and the output says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv import service  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ["app_pages/overview.py", "app_pages/faces.py", "app_pages/digits.py", "app_pages/adaptation.py",
         "app_pages/results.py"]


def page_times() -> list[tuple[str, float, float]]:
    """(page, cold s, warm s) for each page, through AppTest."""
    from streamlit.testing.v1 import AppTest

    rows = []
    for page in PAGES:
        times = []
        for _ in range(2):  # cold, then warm (st.cache_resource keeps the catalog and models in this process)
            app = AppTest.from_file(APP, default_timeout=120)
            start = time.perf_counter()
            app.run()
            if page != PAGES[0]:
                app.switch_page(page).run()
            times.append(time.perf_counter() - start)
            if app.exception:
                raise RuntimeError(f"{page} raised: {app.exception[0].value}")
        rows.append((page, *times))
    return rows


def timed(fn, repeats: int = 3) -> tuple[float, float]:
    """Seconds of the first call (which chooses the precision, timed unless cached) and the median of `repeats`
    calls after it."""
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def face_generators(catalog: service.Catalog) -> list[tuple[str, torch.nn.Module, dict]]:
    """The shipped face GANs; a preset-shaped random generator stands in for each one not shipped."""
    from dlcv.models import build_model
    from dlcv.presets import get_preset

    found = []
    for name in service.FACE_GAN_ORDER[:2]:
        if name in catalog.models:
            model, document = service.load(catalog.models[name].path)
            found.append((name, model, document))
        else:
            preset = get_preset(name)
            found.append((f"{name} (not shipped: random weights, same architecture)",
                          build_model(preset.architecture, preset.model).eval(), {"architecture": "generator"}))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--empty-cache", action="store_true",
                        help="start from an empty precision cache, as on a fresh machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"checkpoints: {service.checkpoints_root()}, torch threads: {torch.get_num_threads()}, precision cache: "
          f"{'empty' if args.empty_cache else 'as found'}\n")
    with tempfile.TemporaryDirectory(prefix="dlcv_cache_") as empty:
        if args.empty_cache:  # a fresh machine has no precision choices cached: the first generation times them
            os.environ["DLCV_CACHE"] = empty
        # with an empty cache the generations run first, so that their first call is the one that probes
        for part in ([work, pages] if args.empty_cache else [pages, work]):
            part()


def pages() -> None:
    print("| page | first visit (s) | later visit (s) |\n| --- | ---: | ---: |")
    for page, cold, warm in page_times():
        print(f"| {Path(page).stem} | {cold:.2f} | {warm:.2f} |", flush=True)
    print()


def work() -> None:
    catalog = service.catalog()
    print("| work | first call (s) | median s (3 calls after it) | target |\n| --- | ---: | ---: | ---: |")
    for name, model, document in face_generators(catalog):
        first, seconds = timed(lambda: service.generate_faces(model, document, 16, seed=0))
        print(f"| 16 faces, {name} | {first:.3f} | {seconds:.3f} | 1 |", flush=True)
    if service.DIGIT_DIFFUSION in catalog.models:
        model, document = service.load(catalog.models[service.DIGIT_DIFFUSION].path)
        w = service.sampling_defaults(document).guidance
        first, seconds = timed(lambda: service.digits(model, document, 3, 10, seed=0, sampler="ddim", steps=25))
        print(f"| 10 digits, {service.DIGIT_DIFFUSION} DDIM-25, w = {w}, with the reverse-process frames "
              f"| {first:.3f} | {seconds:.3f} | 3 |")
    else:
        print(f"| 10 digits | - | - | 3 | ({service.missing_note(service.DIGIT_DIFFUSION)})")
    print()


if __name__ == "__main__":
    main()
