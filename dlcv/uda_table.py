"""The UDA table: every prepared digits pair x {source-only, DANN, VADA + mean teacher, target-only} x seeds,
as `python -m dlcv train uda_<method> ...` subprocesses in a pool; then a markdown report, t-SNE figures and shipping.

    python scripts/uda_table.py --data data --out runs/uda_table --jobs 12 --steps 6000          # train (resumable)
    python scripts/uda_table.py --data data --out runs/uda_table_cpu --jobs 2 --steps dann=3000,vada=1000,*=3000  # CPU
    python scripts/uda_table.py --out runs/uda_table --report                                   # tables -> stdout + md
    python scripts/uda_table.py --out runs/uda_table --validators    # what each label-free selection rule picks
    python scripts/uda_table.py --data data --out runs/uda_table --tsne                         # seed-0 t-SNE PNGs
    python scripts/uda_table.py --data data --out runs/uda_table --tsne-over-training dann_mnistm_to_usps_s0
    python scripts/uda_table.py --out runs/uda_table --ship checkpoints [--pairs mnist:usps]     # DANN + VADA ckpts
    python scripts/uda_table.py --data data --out runs/uda_table --methods refine --pairs mnist:mnistm  # stage 2:
        # DIRT-T-style refinement of each DANN run's final weights (--init; exported by --final --report)
    python scripts/uda_table.py --data data --pack runs/digits.npz   # carry the data (~45 MB) to a GPU machine ...
    python scripts/uda_table.py --unpack runs/digits.npz --data data --jobs 12    # ... rebuild it there, then train

Each run writes its output (progress bar, errors) to <out>/logs/<run>.log as it trains. A run whose results/<run>.json
exists is skipped, and a run cut short continues from its last state (every 500 steps) when its config is unchanged, so
an interrupted table resumes; a target-only run is shared by the pairs with the same target. Model selection inside each
run uses source val accuracy (or the label-free validator `--set=--method.select=RULE` names; --ship then ranks the
seeds by it too); the oracle (target-val-selected) figure is reported in its own column.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from dlcv import catalog
from dlcv.catalog import UDA_PAIRS as PAIRS  # svhn pairs only run when svhn is prepared
from dlcv.metadata import SELECTION_NAMES

ROOT = Path(__file__).resolve().parents[1]  # the checkout the training subprocesses run in

METHODS = list(catalog.METHODS)
COLUMNS = {"source_only": "source only", "dann": "DANN", "vada": "VADA + teacher (ours)",
           "refine": "DANN + refinement (ours)", "assoc": "associative DA",
           "gta": "GTA", "target_only": "target only"}
# the methods with t-SNE figures, shipped checkpoints and an oracle column: DANN and the improved ones
ADAPTED = tuple(m for m in catalog.METHODS if catalog.METHOD_SLOT[m] in ("dann", "improved"))
# ablation of the improved method: name -> (preset method, overrides); each row switches one part off
ABLATION = {
    "vada": ("vada", []),
    "- mean teacher": ("vada", ["--method.teacher=false"]),
    "- VAT": ("vada", ["--method.vat_src_weight=0", "--method.vat_tgt_weight=0"]),
    "- entropy + diversity": ("vada", ["--method.ent_weight=0", "--method.div_weight=0"]),
    "- augmentation": ("vada", ["--method.augment=false"]),
    "- per-domain BN": ("vada", ["--model.domain_bn=false"]),
    "DANN + per-domain BN": ("dann", ["--model.domain_bn=true"]),
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "full"


def available_pairs(data: str) -> list[tuple[str, str]]:
    have = {p.name for p in (Path(data) / "digits").glob("*") if (p / "train.csv").is_file()}
    return [(s, t) for s, t in PAIRS if s in have and t in have]


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        pair = catalog.parse_pair_name(item.replace("->", ":").replace(":", "_to_"))
        if pair is None:
            raise SystemExit(f"--pairs item {item!r} must look like mnistm:usps (source:target)")
        pairs.append(pair)
    return pairs


def plan(args: argparse.Namespace) -> list[dict]:
    """Every run of the table (and of the ablation) as a dict: name, preset, overrides, pair, seed, method."""
    pairs = parse_pairs(args.pairs) if args.pairs else available_pairs(args.data)
    if not pairs:
        raise SystemExit(f"no prepared domain pairs under {args.data}/digits; run `python -m dlcv data prepare`")
    runs = []
    for src, tgt in pairs:
        for method in [m for m in args.methods.split(",") if m]:  # --methods= : ablation runs only
            for seed in (int(s) for s in args.seeds.split(",")):
                runs.append({"name": f"{method}_{catalog.pair_name(src, tgt)}_s{seed}", "preset": f"uda_{method}",
                             "overrides": [], "source": src, "target": tgt, "seed": seed, "method": method, "variant": None})
    if args.ablation:
        for src, tgt in parse_pairs(args.ablation):
            for variant, (method, overrides) in ABLATION.items():
                for seed in (int(s) for s in args.ablation_seeds.split(",")):
                    if variant == "vada" and f"vada_{src}_to_{tgt}_s{seed}" in {r["name"] for r in runs}:
                        continue  # the full method's table run doubles as the ablation's first row
                    runs.append({"name": f"abl_{slug(variant)}_{src}_to_{tgt}_s{seed}", "preset": f"uda_{method}",
                                 "overrides": overrides, "source": src, "target": tgt, "seed": seed,
                                 "method": method, "variant": variant})
    order = {"vada": 0, "dann": 1, "source_only": 2, "target_only": 3}  # longest first packs the pool better
    return sorted(runs, key=lambda r: (order.get(r["method"], 9), r["name"]))


def train_overrides(run: dict, args: argparse.Namespace) -> list[str]:
    """The `python -m dlcv train <preset>` overrides of one run."""
    out = Path(args.out)
    overrides = [f"--data.root={args.data}", f"--data.domain={run['source']}", f"--data.target_domain={run['target']}",
                 f"--train.seed={run['seed']}", f"--train.out_dir={out / 'runs'}", f"--name={run['name']}",
                 f"--train.device={args.device}", *run["overrides"], *args.set]
    if run["method"] == "refine":  # refines the trained run of the same pair and seed
        overrides.append(f"--method.init={args.init.format(**run)}")
    steps = args.steps.get(run["method"], args.steps.get("*"))
    return overrides + ([f"--train.steps={steps}"] if steps else [])


def resumable(run: dict, args: argparse.Namespace) -> bool:
    """True when the run was cut short with the same config (train section included: lambda_p and the lr follow the
    total step count), so it continues from its last state.pt instead of starting over with --fresh."""
    import torch

    from dlcv.config import apply_overrides, to_dict
    from dlcv.presets import get_preset
    from dlcv.training.common import STATE_NAME, recorded_method, run_dir

    cfg = apply_overrides(get_preset(run["preset"]), train_overrides(run, args))
    path = run_dir(cfg) / STATE_NAME
    if not path.is_file():
        return False
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)["config"]
    except (RuntimeError, EOFError, OSError, KeyError, pickle.UnpicklingError):  # unreadable: --fresh replaces it
        return False
    now = to_dict(cfg)
    saved["method"], now["method"] = recorded_method(saved), recorded_method(cfg)  # every option, defaults too
    if now["model"].get("input_norm") == "auto":  # stored as what it resolved to (from the domains, compared below)
        now["model"]["input_norm"] = saved["model"].get("input_norm")
    for config in (saved, now):  # stored as what ran (train.amp="auto" -> "bf16"): speed and display, not the schedule
        for key in ("amp", "channels_last", "progress"):
            config.get("train", {}).pop(key, None)
    return all(saved.get(key) == now.get(key) for key in ("architecture", "model", "data", "method", "train"))


def train_argv(run: dict, args: argparse.Namespace) -> list[str]:
    """The `python -m dlcv train` argv of one run: --fresh unless it resumes, its checkpoint under <out>/checkpoints."""
    fresh = [] if resumable(run, args) else ["--fresh"]
    return [sys.executable, "-m", "dlcv", "train", run["preset"], *fresh, "--out",
            str(Path(args.out) / "checkpoints" / run["name"]), *train_overrides(run, args)]


def run_one(run: dict, args: argparse.Namespace) -> dict:
    """Train one run in a subprocess (--threads threads, its own CUDA context); write results/<name>.json.

    Its output (progress bar, evaluations, errors) streams into logs/<name>.log, appended across resumes, so an hour-long
    run can be followed with `tail -f` while the pool only reports runs as they finish."""
    out = Path(args.out)
    ckpt = out / "checkpoints" / run["name"]
    command = train_argv(run, args)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    log = out / "logs" / f"{run['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # one write per line: the pool's threads print at once, and print() writes the newline separately
    print(f"{run['name']}: started, output in {log}\n", end="", flush=True)
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    record = {**run, "command": shlex.join(command), "returncode": proc.returncode,
              "wall_seconds": round(time.perf_counter() - start, 1), "log": str(log)}
    if proc.returncode == 0:
        record["metrics"] = json.loads((ckpt / "config.json").read_text())["metrics"]
        record["checkpoint"] = str(ckpt)
    else:
        record["error"] = log.read_text(errors="replace")[-3000:]
    path = out / "results" / f"{run['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if proc.returncode == 0:  # failed runs are not cached, so a rerun retries them
        path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def warm_cache(runs: list[dict], data: str) -> None:
    """Decode each domain's PNGs once here, so parallel runs read the .npy cache instead of all decoding at once."""
    from dlcv.data.digits import available_splits, read_digits

    for domain in sorted({r["source"] for r in runs} | {r["target"] for r in runs}):
        for split in available_splits(data, domain):
            read_digits(data, domain, split)


def pack(data: str, path: str) -> None:
    """Every prepared digits split (uint8 images, labels, file names) in one compressed .npz, small enough to carry to
    a machine without the PNG folders (mnistm + usps + mnist: ~45 MB)."""
    import numpy as np

    from dlcv.data.digits import available_splits, read_digits

    arrays = {}
    for domain_dir in sorted((Path(data) / "digits").glob("*")):
        if not (domain_dir / "train.csv").is_file():
            continue
        for split in available_splits(data, domain_dir.name):
            d = read_digits(data, domain_dir.name, split)
            key = f"{domain_dir.name}/{split}"
            arrays[f"{key}/images"] = d.images.numpy()
            arrays[f"{key}/labels"] = d.labels.numpy()
            arrays[f"{key}/names"] = np.array(d.names)
            print(f"packed {key}: {len(d)} images", flush=True)
    np.savez_compressed(path, **arrays)


def unpack(path: str, data: str) -> None:
    """Write the course layout (<data>/digits/<domain>/data/*.png + <split>.csv) back from a --pack file."""
    import numpy as np
    from PIL import Image

    blob = np.load(path)
    for key in sorted(k[: -len("/images")] for k in blob.files if k.endswith("/images")):
        domain, split = key.split("/")
        folder = Path(data) / "digits" / domain
        (folder / "data").mkdir(parents=True, exist_ok=True)
        images, labels, names = blob[f"{key}/images"], blob[f"{key}/labels"], blob[f"{key}/names"]
        for image, name in zip(images, names):
            pixels = image.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
            Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(folder / "data" / str(name))
        rows = ["image_name,label"] + [f"{n},{int(y)}" for n, y in zip(names, labels)]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
        print(f"unpacked {folder}/{split}.csv: {len(names)} images", flush=True)


def parse_steps(text: str) -> dict[str, int]:
    """--steps 3000 (every run) or dann=3000,vada=1000 (per method; '*' for the rest) -> {method or '*': steps}."""
    steps = {}
    for item in (i for i in text.split(",") if i.strip()):
        key, _, value = item.rpartition("=")
        if key and key != "*" and key not in METHODS:
            raise SystemExit(f"--steps item {item!r}: unknown method {key!r}; choose from {METHODS} or '*'")
        try:
            steps[key or "*"] = int(value)
        except ValueError:
            raise SystemExit(f"--steps item {item!r} must be N or method=N, e.g. dann=3000,vada=1000") from None
    return steps


def reuse_target_only(run: dict, args: argparse.Namespace) -> bool:
    """Target-only trains and predicts on the target only (the source's input statistics are stored, never used), so
    a finished run for the same target, seed, steps and overrides under another source is the same run: record it for
    this pair too, marked `reused_from`."""
    if run["method"] != "target_only" or run["variant"] is not None:
        return False
    from dlcv.presets import get_preset

    steps = args.steps.get("target_only", args.steps.get("*")) or get_preset("uda_target_only").train.steps
    for path in sorted((Path(args.out) / "results").glob(f"target_only_*_to_{run['target']}_s{run['seed']}.json")):
        rec = json.loads(path.read_text())
        if (rec.get("returncode") == 0 and rec.get("reused_from") is None and rec["overrides"] == run["overrides"]
                and rec["metrics"]["steps"] == steps
                and all(item in command_tokens(rec) for item in args.set)):
            (path.parent / f"{run['name']}.json").write_text(json.dumps(
                {**rec, **{k: run[k] for k in ("name", "source")}, "reused_from": rec["name"]}, indent=1) + "\n")
            print(f"{run['name']}: reusing {rec['name']} (target-only does not read the source)", flush=True)
            return True
    return False


def train_all(args: argparse.Namespace) -> None:
    runs = plan(args)
    warm_cache(runs, args.data)
    todo = [r for r in runs if not (Path(args.out) / "results" / f"{r['name']}.json").is_file()
            and not reuse_target_only(r, args)]
    print(f"{len(runs)} runs planned, {len(runs) - len(todo)} done already, {len(todo)} to train "
          f"with {args.jobs} jobs", flush=True)
    start, failures = time.perf_counter(), 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, r, args) for r in todo]
        for i, future in enumerate(as_completed(futures), 1):
            rec = future.result()
            if rec["returncode"] == 0:
                m = rec["metrics"]
                print(f"[{i}/{len(todo)}] {rec['name']}: target test {m['target_test_acc']:.4f} "
                      f"(oracle {m['oracle_target_test_acc']:.4f}), {m['steps_per_s']:.1f} steps/s, "
                      f"{rec['wall_seconds']:.0f} s  [{time.perf_counter() - start:.0f} s]", flush=True)
            else:
                failures += 1
                last = rec["error"].strip().splitlines()[-1:] or ["?"]
                print(f"[{i}/{len(todo)}] {rec['name']} FAILED (rc {rec['returncode']}): {last[0]} "
                      f"(whole output: {rec['log']})", flush=True)
    write_summary(args)
    if failures:
        print(f"{failures} run(s) failed; rerun the same command to retry them", flush=True)


def write_summary(args: argparse.Namespace) -> Path:
    records = [json.loads(p.read_text()) for p in sorted((Path(args.out) / "results").glob("*.json"))]
    path = Path(args.out) / "summary.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    print(f"summary of {len(records)} runs -> {path}", flush=True)
    return path


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * spread:.1f}" + (f" (n={len(values)})" if len(values) != 3 else "")


# overrides every table run gets from its place in the table (train_overrides), not from how it was trained
PLACE_KEYS = ("--data.root", "--data.domain", "--data.target_domain", "--train.seed", "--train.out_dir", "--name",
              "--train.progress", "--train.device", "--train.steps")


def command_tokens(record: dict) -> list[str]:
    """A result's recorded command as argv (shlex-quoted since paths may hold spaces; older records are plain)."""
    try:
        return shlex.split(record.get("command") or "")
    except ValueError:  # unbalanced quotes: an older record's path
        return (record.get("command") or "").split()


def run_settings(record: dict) -> str:
    """The overrides a finished run was trained with beyond its place in the table (read back from its recorded
    command, so runs merged from other folders or machines say how they ran), e.g. `--method.augment=true`."""
    tokens = command_tokens(record)
    if "train" not in tokens:
        return "?"
    own = f"{catalog.pair_name(record['source'], record['target'])}_s{record['seed']}"
    kept, skip = [], False
    for token in tokens[tokens.index("train") + 2:]:  # after `train <preset>`
        if skip or token == "--fresh":
            skip = False
            continue
        if token == "--out":
            skip = True
            continue
        if token.split("=", 1)[0] not in PLACE_KEYS:  # a refine run's --method.init names its own pair and seed
            kept.append(token.replace(own, "{pair}_s{seed}") if token.startswith("--method.init=") else token)
    return " ".join(f"`{t}`" for t in kept) or "the preset's"


def selection_phrase(table: list[dict], methods: list[str]) -> str:
    """How the table's weights were chosen (never by target labels), per group of methods where the rules differ."""
    def phrase(rules: set[str]) -> str:
        if rules == {"labelled_val"}:
            return "weights selected by source-val accuracy"
        if rules == {"last"}:  # e.g. refine, whose preset ships its final weights
            return "each run's final weights (its preset's rule)"
        return f"weights picked by {SELECTION_NAMES[rules.pop()]}" if len(rules) == 1 else \
            "each run's own rule (see its overrides)"

    groups: dict[str, list[str]] = {}
    for m in methods:
        rules = {r["metrics"].get("selected_by", "labelled_val") for r in table if r["method"] == m}
        groups.setdefault(phrase(rules), []).append(COLUMNS[m])
    if len(groups) == 1:
        return f"{next(iter(groups))} (no target labels)"
    return "; ".join(f"{', '.join(names)}: {how}" for how, names in groups.items()) + " (no target labels)"


def report(args: argparse.Namespace) -> str:
    """Markdown: the main table (mean ± std over seeds of target test accuracy, %), how each of its cells was trained
    (run_settings), and the ablation table. Runs from other folders count once their results/<name>.json is copied
    into results/ here."""
    summary = write_summary(args)  # rebuilt from results/*.json, so results merged from several machines count
    records = [r for r in json.loads(summary.read_text()) if r.get("returncode") == 0]
    table = [r for r in records if r["variant"] is None]
    if args.final:  # export each run's final weights (<out>/final/<run>), where a refine stage starts from
        table_runs(args, METHODS)
    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in sorted(table, key=lambda r: PAIRS.index(
        (r["source"], r["target"])) if (r["source"], r["target"]) in PAIRS else 99)))
    methods = [m for m in METHODS if any(r["method"] == m for r in table)]
    oracles = [m for m in methods if m in ADAPTED]

    test_key = "last_step_target_test_acc" if args.final else "target_test_acc"

    def values(pool, src, tgt, key, **match):
        key = test_key if key == "target_test_acc" else key
        return [r["metrics"][key] for r in pool if (r["source"], r["target"]) == (src, tgt)
                and all(r[k] == v for k, v in match.items()) and r["metrics"].get(key) is not None]

    chosen = "each run's final weights (the label-free 'last' rule)" if args.final else selection_phrase(table, methods)
    lines = [f"Target **test** accuracy (%), mean ± std over seeds; {chosen}. Oracle: the same runs' weights "
             "selected by target-val accuracy (uses target labels; for reference only).", "",
             "| pair | " + " | ".join(COLUMNS[m] for m in methods) + " | "
             + " | ".join(f"oracle {COLUMNS[m].removesuffix(' (ours)')}" for m in oracles) + " |",
             "| --- |" + " --- |" * (len(methods) + len(oracles))]
    for src, tgt in pairs:
        cells = [_cell(values(table, src, tgt, "target_test_acc", method=m)) for m in methods]
        oracle = [_cell(values(table, src, tgt, "oracle_target_test_acc", method=m)) for m in oracles]
        lines.append(f"| {src} → {tgt} | " + " | ".join(cells + oracle) + " |")
    steps = {m: "/".join(str(s) for s in sorted({r["metrics"]["steps"] for r in table if r["method"] == m}))
             for m in methods}
    speed = {m: statistics.mean([r["metrics"]["steps_per_s"] for r in table if r["method"] == m]) for m in methods}
    lines += ["", "Steps per run x batch 64: " + ", ".join(f"{COLUMNS[m]} {v}" for m, v in steps.items())
              + ". Mean steps/s per run (runs shared the device): "
              + ", ".join(f"{COLUMNS[m]} {v:.1f}" for m, v in speed.items()) + "."]
    trained: dict[tuple, list[int]] = {}  # how each cell was trained: pair x method x steps x overrides -> seeds
    for r in table:
        if r["method"] in METHODS:
            key = (pairs.index((r["source"], r["target"])), METHODS.index(r["method"]), r["metrics"]["steps"],
                   run_settings(r))
            trained.setdefault(key, []).append(r["seed"])
    lines += ["", "How each cell was trained (`python -m dlcv train uda_<method>` per seed; overrides beyond the pair, "
              "seed and steps):", "", "| pair | method | steps | overrides | seeds |",
              "| --- | --- | ---: | --- | --- |"]
    for (pair, method, n_steps, settings), run_seeds in sorted(trained.items()):
        src, tgt = pairs[pair]
        lines.append(f"| {src} → {tgt} | {COLUMNS[METHODS[method]]} | {n_steps} | {settings} | "
                     f"{', '.join(map(str, sorted(run_seeds)))} |")
    ablation = [r for r in records if r["variant"] is not None]
    if ablation:
        abl_pairs = list(dict.fromkeys((r["source"], r["target"]) for r in ablation))
        seeds = sorted({r["seed"] for r in ablation})
        full = [r for r in table if r["method"] == "vada" and r["seed"] in seeds]
        lines += ["", f"Ablation of VADA + teacher (target test %, seeds {seeds}; each row switches one part off):", "",
                  "| variant | " + " | ".join(f"{s} → {t}" for s, t in abl_pairs) + " |",
                  "| --- |" + " --- |" * len(abl_pairs)]
        for variant in ABLATION:
            pool = full + [r for r in ablation if r["variant"] == "vada"] if variant == "vada" else \
                [r for r in ablation if r["variant"] == variant]
            cells = [_cell(values(pool, s, t, "target_test_acc")) for s, t in abl_pairs]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "RESULTS_uda.md").write_text(text)
    return text


def validator_report(args: argparse.Namespace) -> str:
    """Markdown: per run (pair x method x seed), the target test accuracy (%) of the evaluation each label-free rule
    picks from the run's log (dlcv.validators.picks), next to the oracle's; then each rule's mean gap to the oracle."""
    from dlcv.validators import RULES, picks

    records = [r for r in json.loads(write_summary(args).read_text()) if r.get("returncode") == 0
               and r["variant"] is None and r["method"] != "target_only"]
    order = {m: i for i, m in enumerate(METHODS)}
    records.sort(key=lambda r: (PAIRS.index((r["source"], r["target"])) if (r["source"], r["target"]) in PAIRS
                                else 99, order.get(r["method"], 99), r["seed"]))
    rules = [*RULES, "last"]
    lines = ["Target **test** accuracy (%) of the evaluation each rule picks (step in brackets); oracle: "
             "the best target",  # one output line of 120 columns
             "test accuracy over the same evaluations (reads target labels; never used to pick).", "",
             "| pair | method | seed | " + " | ".join(rules) + " | oracle |", "| --- | --- | ---: |"
             + " ---: |" * (len(rules) + 1)]
    gaps: dict[str, list[float]] = {rule: [] for rule in rules}
    for r in records:
        log_path = Path(args.out) / "runs" / r["name"] / "metrics.jsonl"
        try:
            chosen = picks([json.loads(line) for line in log_path.read_text().splitlines() if line.strip()])
        except (OSError, ValueError) as err:
            print(f"{r['name']}: skipped ({err})", flush=True)
            continue
        oracle = chosen["oracle"][1]
        cells = []
        for rule in rules:
            step, acc = chosen.get(rule, (None, None))
            if acc is None:
                cells.append("-")
                continue
            gaps[rule].append(oracle - acc)
            cells.append(f"{100 * acc:.1f} ({step})")
        lines.append(f"| {r['source']} → {r['target']} | {COLUMNS[r['method']]} | {r['seed']} | "
                     + " | ".join(cells) + f" | {100 * oracle:.1f} ({chosen['oracle'][0]}) |")
    lines.append("| **mean gap to the oracle (points)** | | | " + " | ".join(
        f"**{100 * statistics.mean(g):.2f}**" if g else "-" for g in gaps.values()) + " | 0 |")
    lines.append("| runs within 1 point of the oracle | | | " + " | ".join(
        f"{sum(x <= 0.01 for x in g)}/{len(g)}" if g else "-" for g in gaps.values()) + " | |")
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "RESULTS_validators.md").write_text(text)
    return text


def write_into(path: str, block: str, text: str) -> None:
    """Replace what lies between the lines `<!-- uda_table:BLOCK -->` and `<!-- /uda_table:BLOCK -->` of the markdown
    file `path` (e.g. RESULTS.md) by text; the file is written whole or not at all (fileio.atomic_write_text)."""
    from dlcv.fileio import atomic_write_text

    begin, end = f"<!-- uda_table:{block} -->", f"<!-- /uda_table:{block} -->"
    doc = Path(path).read_text()
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise SystemExit(f"--into {path}: it needs one line {begin} and, below it, one line {end} around the table")
    head, rest = doc.split(begin)
    atomic_write_text(Path(path), head + begin + "\n" + text + end + rest.split(end, 1)[1])
    print(f"wrote the {block} table into {path}", flush=True)


def table_runs(args: argparse.Namespace, methods: tuple[str, ...]) -> list[dict]:
    """The finished table runs (not ablation) of `methods` in summary.json, those of --pairs only when it is given;
    with --final, each with the checkpoint and figures of its final weights (final_checkpoint)."""
    wanted = set(parse_pairs(args.pairs)) if args.pairs else None
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    runs = [r for r in summary if r.get("returncode") == 0 and r["variant"] is None and r["method"] in methods
            and (wanted is None or (r["source"], r["target"]) in wanted)]
    return [final_checkpoint(r, args) for r in runs] if args.final else runs


def final_checkpoint(run: dict, args: argparse.Namespace) -> dict:
    """The run with its *final* weights as checkpoint (<out>/final/<name>, written once from its state.pt by
    dlcv.training.uda.export_final, with every figure measured on those weights) instead of its selected ones."""
    from dlcv import checkpoint
    from dlcv.config import RunConfig, apply_overrides, from_dict
    from dlcv.metadata import retarget
    from dlcv.presets import get_preset
    from dlcv.training.uda import export_final

    dest = Path(args.out) / "final" / run["name"]
    if not (dest / "config.json").is_file():
        trained = bool(run.get("checkpoint")) and (Path(run["checkpoint"]) / "config.json").is_file()
        if trained:  # the config the run trained with, so --steps/--set need not be repeated
            cfg = from_dict(RunConfig, checkpoint.read_config(run["checkpoint"])["run"])
        else:
            cfg = apply_overrides(get_preset(run["preset"]), train_overrides(run, args))
        export_final(cfg, dest)
        recorded = checkpoint.read_config(run["checkpoint"]).get("rebuild") if trained else None
        if recorded and " dlcv train " in recorded[-1]:  # the same training, its final weights: select=last
            final = retarget(recorded[-1], dest, "--method.select=last")
            checkpoint.update_document(dest, lambda d: {**d, "rebuild": [*recorded[:-1], final]})
    return {**run, "checkpoint": str(dest), "metrics": checkpoint.read_config(dest)["metrics"]}


def val_sample(data: str, source: str, target: str, per_domain: int, generator) -> tuple[list[tuple], int]:
    """Up to per_domain random val images of each domain, equal counts: ([(images, labels) of source, of target], n)."""
    import torch

    from dlcv.data.digits import read_digits

    splits = [read_digits(data, d, "val") for d in (source, target)]
    n = min(per_domain, *(len(s) for s in splits))
    picks = [torch.randperm(len(split), generator=generator)[:n] for split in splits]
    return [(s.images[i], s.labels[i]) for s, i in zip(splits, picks)], n


def tsne(args: argparse.Namespace) -> None:
    """Seed-0 t-SNE of features on source and target val images (balanced: equal counts per domain), two PNGs per
    pair (those of --pairs if given) and method: coloured by class and by domain."""
    import torch

    from dlcv import checkpoint
    from dlcv.figures import domain_tsne

    runs = [r for r in table_runs(args, ("source_only", *ADAPTED)) if r["seed"] == 0]
    generator = torch.Generator().manual_seed(0)
    for r in runs:
        model, _ = checkpoint.load(r["checkpoint"])
        domains, n = val_sample(args.data, r["source"], r["target"], args.tsne_per_domain, generator)
        stem = Path(args.out) / "tsne" / f"{r['method']}_{r['source']}_to_{r['target']}"
        title = f"{COLUMNS[r['method']]}: {r['source']} → {r['target']}"
        domain_tsne(model, *domains, stem,
                    (f"{title} (by class)", f"{title} (by domain)"),
                    [f"source {r['source']}", f"target {r['target']}"])
        print(f"wrote {stem}_class.png and {stem}_domain.png ({n} val images per domain)", flush=True)


def tsne_over_training(args: argparse.Namespace) -> None:
    """t-SNE of one table run's snapshots (train.snapshot_every) at up to --tsne-columns evenly spaced steps, on the
    same source and target val images, in one PNG: <out>/tsne/<run>_over_training.png."""
    import torch

    from dlcv import checkpoint
    from dlcv.figures import tsne_over_training as draw

    name = args.tsne_over_training
    folder = Path(args.out) / "runs" / name / "snapshots"
    snapshots = sorted(folder.glob("step_*"))
    if not snapshots:
        raise SystemExit(f"{folder} holds no snapshots; train the run with --set=--train.snapshot_every=N first")
    picked = [snapshots[round(i * (len(snapshots) - 1) / max(args.tsne_columns - 1, 1))]
              for i in range(min(args.tsne_columns, len(snapshots)))]
    picked = list(dict.fromkeys(picked))
    cfg = checkpoint.read_config(picked[0])["run"]
    source, target = cfg["data"]["domain"], cfg["data"]["target_domain"]
    domains, n = val_sample(args.data, source, target, args.tsne_per_domain, torch.Generator().manual_seed(0))
    models = [(f"step {int(p.name.removeprefix('step_')):,}", checkpoint.load(p)[0].eval()) for p in picked]
    path = draw(models, *domains, Path(args.out) / "tsne" / f"{name}_over_training.png",
                [f"source {source}", f"target {target}"])
    print(f"wrote {path} ({len(models)} snapshots, {n} val images per domain)", flush=True)


def selection_score(run: dict, out: str) -> float:
    """The score the run's own selection rule gave its selected weights, so that seeds are ranked by the rule that
    picked their steps: labelled val accuracy (rules labelled_val and last), else the label-free validator's score
    its result records (selected_score) or, for runs recorded without it, its log holds at the selected step."""
    metrics = run["metrics"]
    rule = metrics.get("selected_by", "labelled_val")
    if rule in ("labelled_val", "last"):
        return metrics["labelled_val_acc"]
    if metrics.get("selected_score") is not None:
        return metrics["selected_score"]
    log = Path(out) / "runs" / run["name"] / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    scores = [r[f"validator/{rule}"] for r in records
              if r.get("step") == metrics["selected_step"] and f"validator/{rule}" in r]
    if not scores:
        raise SystemExit(f"{log} has no {rule} score at step {metrics['selected_step']}, which ranks {run['name']} "
                         f"among its seeds; ship from the --out folder the runs trained in")
    return scores[-1]


def ship(args: argparse.Namespace) -> None:
    """Copy, per pair (those of --pairs if given) and method of --ship-methods (default: DANN and every improved
    method), the seed whose selected weights score best by the rule that selected them (selection_score: source-val
    accuracy unless the runs were trained with another --method.select; never target labels; ties go to the lower
    seed) to <dir>/uda_<method>_<src>_to_<tgt>."""
    methods = tuple(m for m in args.ship_methods.split(",") if m) if args.ship_methods else ADAPTED
    unknown = sorted(set(methods) - set(ADAPTED))
    if unknown:
        raise SystemExit(f"--ship-methods {unknown}: only {list(ADAPTED)} are shipped")
    runs = table_runs(args, methods)
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["method"], r["source"], r["target"]), []).append(r)
    for (method, src, tgt), group in sorted(groups.items()):
        # the scale each seed is ranked on: labelled val accuracy (for labelled_val and last), BNM, IM, ...
        rules = sorted({r["metrics"].get("selected_by", "labelled_val").replace("last", "labelled_val") for r in group})
        if len(rules) > 1:
            raise SystemExit(f"{method} {src} -> {tgt}: the seeds were selected by different rules ({', '.join(rules)})"
                             f"; ship runs trained with one --method.select (or --pairs / another --out)")
        best = max(group, key=lambda r: (selection_score(r, args.out), -r["seed"]))
        dest = Path(args.ship) / catalog.uda_name(method, src, tgt)
        from dlcv.cli import main as dlcv_main  # `export`: the copy records how it was made in its rebuild list

        if dlcv_main(["export", best["checkpoint"], "--out", str(dest)]) != 0:
            raise SystemExit(f"could not ship {best['checkpoint']} to {dest}")
        size = sum(p.stat().st_size for p in dest.iterdir()) / 2**20
        if size > 10:
            raise SystemExit(f"{dest} is {size:.1f} MB, over the 10 MB limit; use a smaller --model.width")
        metrics = best["metrics"]
        print(f"{dest}: seed {best['seed']}, {metrics.get('selected_by', 'labelled_val')} "
              f"{selection_score(best, args.out):.4g}, source val {metrics['labelled_val_acc']:.4f}, target test "
              f"{metrics['target_test_acc']:.4f}, {size:.1f} MB", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DLCV_DATA", "data"), help="course-layout root")
    parser.add_argument("--out", default="runs/uda_table")
    parser.add_argument("--jobs", type=int, default=4, help="runs in parallel (subprocesses)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per run (more than cores / jobs oversubscribes: about 3x slower)")
    parser.add_argument("--steps", type=parse_steps, default={},
                        help="steps per run, N or per method: dann=3000,vada=1000,*=3000 (default: the presets')")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m not in ("refine", "assoc", "gta")),
                        help=f"of {METHODS}; refine is a second stage: it starts from each DANN run's final weights "
                             f"(--init), so run it after --final --report has exported them; assoc and gta run "
                             f"when named")
    parser.add_argument("--pairs", default="", help="e.g. mnistm:usps,usps:mnistm (default: every prepared pair)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ablation", default="", help="pairs for the VADA ablation runs, e.g. usps:mnistm,mnistm:usps")
    parser.add_argument("--ablation-seeds", default="0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every run, e.g. --set=--model.width=32")
    parser.add_argument("--init", default="runs/uda_table/final/dann_{source}_to_{target}_s{seed}",
                        help="checkpoint each refine run starts from; {source}, {target}, {seed} are filled in")
    parser.add_argument("--report", action="store_true", help="print the markdown tables (and write RESULTS_uda.md)")
    parser.add_argument("--validators", action="store_true",
                        help="print what each label-free selection rule picks in every run's log, against the oracle "
                             "(and write RESULTS_validators.md)")
    parser.add_argument("--into", default="", metavar="MD",
                        help="with --report / --validators: also put the table into MD (e.g. RESULTS.md) between its "
                             "<!-- uda_table:report --> (or validators) and <!-- /uda_table:... --> lines")
    parser.add_argument("--tsne", action="store_true", help="t-SNE PNGs of the seed-0 runs")
    parser.add_argument("--tsne-per-domain", type=int, default=700)
    parser.add_argument("--tsne-over-training", default="", metavar="RUN",
                        help="one PNG of RUN's snapshots' t-SNE (train it with --set=--train.snapshot_every=N)")
    parser.add_argument("--tsne-columns", type=int, default=4, help="snapshots in the --tsne-over-training figure")
    parser.add_argument("--ship", default="", metavar="DIR", help="copy DANN and improved-method checkpoints to DIR")
    parser.add_argument("--ship-methods", default="", help=f"with --ship: only these, e.g. assoc (of {list(ADAPTED)})")
    parser.add_argument("--final", action="store_true",
                        help="--report/--tsne/--ship use each run's final weights instead of its source-val-selected "
                             "ones (a label-free rule; for runs whose source val saturates, so its argmax is noise)")
    parser.add_argument("--pack", default="", metavar="NPZ", help="write every prepared digits split to NPZ and exit")
    parser.add_argument("--unpack", default="", metavar="NPZ", help="first rebuild --data from an NPZ made by --pack")
    args = parser.parse_args(argv)
    args.set = [s if s.startswith("--") else f"--{s}" for s in args.set]
    if args.threads < 1:
        parser.error(f"--threads={args.threads} must be >= 1")
    if args.pack:
        return pack(args.data, args.pack)
    if args.unpack:
        unpack(args.unpack, args.data)
    if not (args.report or args.tsne or args.ship or args.validators or args.tsne_over_training):
        train_all(args)
    if args.tsne:
        tsne(args)
    if args.tsne_over_training:
        tsne_over_training(args)
    if args.ship:
        ship(args)
    if args.report:
        text = report(args)
        print(text)
        if args.into:
            write_into(args.into, "report", text)
    if args.validators:
        text = validator_report(args)
        print(text)
        if args.into:
            write_into(args.into, "validators", text)


if __name__ == "__main__":
    main()
