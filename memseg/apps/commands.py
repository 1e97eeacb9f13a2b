"""What each ``memseg`` sub-command does, given its parsed flags (the parser is in :mod:`memseg.apps.cli`).

One handler per sub-command, ``(args: argparse.Namespace) -> exit code`` (``run_predict`` lives in
:mod:`memseg.apps.predict_command`, with the files it writes). A handler turns flags into
plain calls into the package (``generate``, ``AnomalySimulator``, ``train``, ``evaluate``,
``Predictor``, ``export_onnx``) and prints what happened; the domain modules know no ``argparse``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from memseg.apps.predict_command import run_predict  # noqa: F401  (memseg predict: its own module)
from memseg.config import as_size, read_yaml_mapping
from memseg.data.datasets import load_split
from memseg.data.synthetic import CATEGORIES, check_scene_memory, generate
from memseg.data.synthetic_scenes import scene_size
from memseg.engine.checkpoint import model_state_bytes, read_checkpoint
from memseg.engine.config_sources import SET_FLAG, ConfigSources, parse_assignments
from memseg.engine.evaluation import METRICS_JSON, METRICS_MD, evaluate, f1_baseline, pct
from memseg.engine.export import OPSET, export_onnx
from memseg.engine.run_folder import CHECKPOINT_DIR, LAST_CHECKPOINT, LOG_CSV, LOG_JSONL, check_run_dir_path
from memseg.engine.train_config import TrainConfig, stored_config
from memseg.engine.training import str_or_none, train
from memseg.paths import locate_dtd
from memseg.simulation import NO_DTD_WARNING, SOURCES, AnomalySimulator, SimulationResult
from memseg.utils import (
    check_fits_in_memory,
    check_output_dir,
    create_new_file,
    select_device,
)


# --------------------------------------------------------------------------------- memseg synth
def run_synth(args: argparse.Namespace) -> int:
    """``memseg synth``: generate the dataset and print one line per category."""
    check_scene_memory(scene_size(args.size), "--size")
    out = generate(args.out, categories=args.categories, seed=args.seed, size=args.size, n_train=args.n_train,
                   n_test=args.n_test, overwrite=args.overwrite, progress=True)
    for c in args.categories or CATEGORIES:
        meta = json.loads((out / c / "dataset.json").read_text())
        n_test = sum(v for k, v in meta["counts"].items() if k.startswith("test/"))
        print(f"{out / c}: {meta['n_train']} train, {n_test} test ({meta['n_masks']} masks), size {meta['size']}, seed "
              f"{meta['seed']}")
    return 0


# ------------------------------------------------------------------------------ memseg simulate
def _save_png(array: np.ndarray, path: Path, out: Path) -> None:
    """A new PNG under ``out``: created exclusively, never through a link (:func:`memseg.utils.create_new_file`)."""
    with create_new_file(path, out) as fh:
        Image.fromarray(array).save(fh, format="PNG")


def run_simulate(args: argparse.Namespace) -> int:
    """`memseg simulate`: simulate `--n` anomalies on the category's train/good images.

    Writes NNNN_image.png, NNNN_mask.png and summary.json to --out (which must be new or empty),
    or with --no-save writes nothing and prints `throughput: X samples/s` as the last line.
    """
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    out = None
    if not args.no_save:
        if not args.out:
            raise ValueError("--out is required unless --no-save is given")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is an existing file, not a folder; refusing to overwrite it")
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"output folder {out} exists and is not empty; refusing to overwrite (choose a new or "
                             "empty folder)")
    device = select_device(args.device)
    size = (args.size, args.size)
    dataset = load_split(args.data, args.category, "train", size=size, layout=args.layout)
    # before anything is allocated: the decoded pool (uint8), a batch's working copies (float32) and, when saving,
    # every sample (image and mask, float32) until they are written
    px = args.size * args.size
    kept = 0 if args.no_save else args.n * px * 4 * 4
    check_fits_in_memory(len(dataset) * 3 * px + min(args.batch_size, args.n) * px * 4 * 4 * 2 + kept,
                         f"--size {args.size}, --n {args.n}" + ("" if args.no_save else " (kept until written)")
                         + f", --batch-size {args.batch_size} ({len(dataset)} images decoded at "
                           f"{args.size}x{args.size} px)",
                         "lower --size, --n or --batch-size (--no-save keeps nothing)", device)
    pool = dataset.load_images()  # uint8 (N, 3, H, W), decoded once
    if pool.shape[0] == 0:
        raise ValueError(f"no training images for category {args.category!r} under {args.data}")
    pool = pool.to(device)
    textures = locate_dtd(args.dtd)
    print(textures.describe(), file=sys.stderr)  # which textures this run uses, or how to give some
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(NO_DTD_WARNING))  # said just above, in CLI terms
        sim = AnomalySimulator.for_category(args.category, dtd_root=textures.path, size=size, device=device)
        sim.load()
    gen = torch.Generator().manual_seed(args.seed)
    # one untimed warm-up call (own generator: the results do not depend on it)
    sim.simulate(pool[: min(args.batch_size, pool.shape[0])].float().div_(255),
                 generator=torch.Generator().manual_seed(0))

    results: list[SimulationResult] = []
    elapsed = 0.0
    batch = max(1, args.batch_size)
    for start in tqdm(range(0, args.n, batch), desc=f"simulate {args.category}", leave=False):
        idx = torch.arange(start, min(start + batch, args.n), device=device) % pool.shape[0]
        images = pool[idx].float().div_(255)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = sim.simulate(images, generator=gen, threshold=args.threshold, delta=args.delta, source=args.source)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - t0
        if out is not None:  # --no-save keeps nothing: its memory does not grow with --n
            results.append(SimulationResult(res.images.cpu(), res.masks.cpu(), res.delta.cpu(), res.source))
    throughput = args.n / max(elapsed, 1e-9)

    if out is None:
        print(f"simulated {args.n} samples of {args.category} at {args.size}x{args.size} on {device}")
        print(f"throughput: {throughput:.1f} samples/s")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    images = torch.cat([r.images for r in results])
    masks = torch.cat([r.masks for r in results])
    deltas = torch.cat([r.delta for r in results]).tolist()
    sources = [s for r in results for s in r.source]
    for i in tqdm(range(args.n), desc="write PNGs", leave=False):
        img = (images[i].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        _save_png(img, out / f"{i:04d}_image.png", out)
        _save_png((masks[i, 0].numpy() > 0.5).astype(np.uint8) * 255, out / f"{i:04d}_mask.png", out)
    summary = {
        "category": args.category,
        "data": str(args.data),
        "n": args.n,
        "size": [args.size, args.size],
        "seed": args.seed,
        "device": str(device),
        "dtd_root": str(sim.dtd_root) if sim.dtd_root is not None else None,
        "n_textures": 0 if sim.textures is None else int(sim.textures.shape[0]),
        "foreground": None if sim.foreground is None else vars(sim.foreground),
        "threshold": args.threshold if args.threshold is not None else sim.config.threshold,
        "counts": {k: sources.count(k) for k in SOURCES},
        "delta": deltas,
        "source": sources,
        "mask_fraction": masks.mean(dim=(1, 2, 3)).tolist(),
        "throughput_samples_per_s": throughput,
    }
    with create_new_file(out / "summary.json", out, mode="w") as fh:
        fh.write(json.dumps(summary, indent=2))
    print(f"wrote {args.n} simulated samples and summary.json to {out}")
    print(f"throughput: {throughput:.1f} samples/s")
    return 0


# ------------------------------------------------------------------------------ memseg pretrain
def run_pretrain(args: argparse.Namespace) -> int:
    """`memseg pretrain`: make an encoder under MemSeg's objective; print where it and its provenance are."""
    from memseg.engine.pretrain import PretrainConfig, pretrain

    check_hub_timeout()
    textures = locate_dtd(args.dtd, flag="--dtd")
    cfg = PretrainConfig.from_dict(dict(
        data=args.data, category=args.category, layout=args.layout, out=args.out, steps=args.steps,
        minutes=args.minutes, size=args.size, seed=args.seed, memory_size=args.memory_size,
        dtd_root=str_or_none(textures.path), device=args.device,
    ), source="memseg pretrain")
    run = cfg.train_config()  # what pretrain trains
    check_training_fits(run.model, run.model_options, run.input_size, run.batch_normal + run.batch_anomalous,
                        options_source="--memory-size",
                        size_source=f"--size {cfg.size}, --memory-size {cfg.memory_size}",
                        hint="lower --size or --memory-size", device=cfg.device)
    budget = f", at most {args.minutes:g} min" if args.minutes else ""
    print(f"memseg pretrain: encoder from {cfg.category} ({cfg.data}), {cfg.steps} steps{budget}, size {cfg.size}, "
          f"device {select_device(cfg.device)}, run folder {cfg.run_dir()}")
    print(textures.describe())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="textures: no DTD found")  # printed just above
            result = pretrain(cfg, progress=True, resume=args.resume, overwrite=args.overwrite,
                              command=getattr(args, "command_line", None))
    except KeyboardInterrupt:
        return 130  # the run said where its checkpoint is and how to resume
    print(f"encoder (stem + blocks 1-3, step {result.steps_done} of {result.steps}): {result.weights}")
    print(f"provenance: {result.provenance}")
    print(f"use it: memseg train --weights {result.weights} ...")
    return 0


# --------------------------------------------------------------------------------- memseg train
def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from `memseg train` flags, one road (:mod:`memseg.engine.config_sources`): the schema's defaults <
    the stored run config (with --resume) < the --config file < each --set key.path=value < the named flags.

    The whole config (model options and simulation included) is checked here, before any data is read; an invalid
    value is reported against where it came from: the flag (``--steps must be >= 1, got 0``), the ``--set``
    (``--set lr=fast: lr must be a number, got 'fast'``), the ``--config`` file or the resumed checkpoint.
    """
    file_values = read_yaml_mapping(args.config, "TrainConfig keys") if args.config else {}
    if args.config:
        TrainConfig.check_keys(file_values, source=str(args.config))
    assignments = list(getattr(args, "set", None) or [])
    set_model = [a.partition("=")[2].strip() for a in assignments if a.partition("=")[0].strip() == "model"]
    model = args.model or (set_model[-1] if set_model else None) or file_values.get("model") or "memseg"
    out = args.out or next((a.partition("=")[2] for a in reversed(assignments) if a.startswith("out=")), None) \
        or file_values.get("out")
    run_dir = Path(out) if out else Path("runs") / f"{args.category}-{model}"
    check_run_dir_path(run_dir)
    sources = ConfigSources()
    if args.resume:
        ckpt = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} (start a fresh run without --resume)")
        stored = stored_config(read_checkpoint(ckpt).get("config", {}))
        stored.pop("device", None)
        sources.add(stored, str(ckpt), check_keys=False)
    if args.config:
        sources.add(file_values, str(args.config))
    sources.add(parse_assignments(assignments, str(model)), SET_FLAG)
    sources.add_flags({
        "data": ("--data", args.data), "category": ("--category", args.category), "model": ("--model", args.model),
        "out": ("--out", args.out), "steps": ("--steps", args.steps), "dtd_root": ("--dtd", args.dtd),
        "size": ("--size", args.size), "seed": ("--seed", args.seed),
        "layout": ("--layout", None if getattr(args, "layout", "auto") == "auto" else args.layout),
        "device": ("--device", None if getattr(args, "device", "auto") == "auto" else args.device),
        "model_options.weights": ("--weights", args.weights),
    })
    default = str(args.config) if args.config else "command line"
    cfg = sources.build(default)
    size_from, options_from = sources.where("size", default), sources.where("model_options", default)
    size = f"--size {cfg.size}" if size_from == "--size" else f"{size_from}: size {cfg.size}"
    options = options_from if options_from.startswith("--") else f"{options_from}: model_options"
    check_training_fits(cfg.model, cfg.model_options, cfg.input_size, cfg.batch_normal + cfg.batch_anomalous,
                        options_source=options, size_source=size, hint="lower the size (or model_options.memory_size, "
                        "batch_normal, batch_anomalous)", device=cfg.device)
    return cfg


def check_training_fits(model: str, options: dict, input_size: tuple[int, int], batch: int, options_source: str,
                        size_source: str, hint: str, device: str) -> None:
    """Before any data is loaded: the model options build the model (unknown keys and wrong kinds are one line
    naming ``options_source``), and the model's state (memory bank included, counted on the meta device) plus one
    batch of float32 input images fits in the machine's memory (else one line naming ``size_source``, with the
    estimate). A lower bound: training needs more (activations, gradients)."""
    h, w = input_size
    state = model_state_bytes(model, {**options, "input_size": (h, w)}, options_source)
    n = options.get("memory_size")
    bank = f", memory_size {n}" if n is not None else ""
    check_fits_in_memory(state + batch * 3 * h * w * 4,
                         f"{size_source} (training {model} at {h}x{w} px, {batch} images a batch{bank})", hint,
                         select_device(device))


def check_hub_timeout() -> None:
    """$MEMSEG_HUB_TIMEOUT, when set, is checked before any work (one line naming it), not when the hub is asked."""
    if "MEMSEG_HUB_TIMEOUT" in os.environ:
        from memseg.models.encoder_weights import hub_timeout

        hub_timeout()


def run_train(args: argparse.Namespace) -> int:
    """`memseg train`: build the config, train, print where the run and checkpoint are."""

    check_hub_timeout()
    cfg = config_from_args(args)
    flag = "--dtd" if args.dtd or not cfg.dtd_root else "dtd_root of the run's config"
    textures = locate_dtd(cfg.dtd_root, flag=flag)  # resolved once, printed, and recorded in the run's config
    cfg.dtd_root = str_or_none(textures.path)
    print(f"memseg train: {cfg.model} on {cfg.category} ({cfg.data}), {cfg.steps} steps, size {cfg.input_size}, "
          f"device {select_device(cfg.device)}, run folder {cfg.run_dir()}")
    weights = str(cfg.model_options.get("weights", "auto" if cfg.model == "memseg" else "random"))
    if cfg.model == "draem":
        print("encoder weights: none (DRAEM trains from scratch)")
    elif weights == "auto":
        print("encoder weights: auto (ImageNet when timm can get them, else the kit's offline encoder, with a banner)")
    elif weights == "random":
        print("encoder weights: RANDOM initialisation (no pretrained weights; the paper uses ImageNet: "
              "pass --weights imagenet when online, or --weights path/to/resnet18.pth)")
    else:
        print(f"encoder weights: {weights}")
    print(textures.describe())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="textures: no DTD found")  # printed just above
            result = train(cfg, progress=True, resume=args.resume, overwrite=getattr(args, "overwrite", False),
                           wording="cli")  # notes name the flags (--resume), not the API arguments
    except KeyboardInterrupt:
        return 130  # train() said where the checkpoint is and how to resume
    print(f"encoder weights used: {result.weights_source}")
    print(f"run folder: {result.run_dir}")
    print(f"final model: {result.checkpoint} (slim inference checkpoint: for memseg evaluate / predict and the "
          "dashboard)")
    print(f"resumable checkpoint: {result.last} (with optimizer state: --resume continues from it)")
    print(f"logs: {result.run_dir / LOG_CSV}, {result.run_dir / LOG_JSONL}")
    if result.threshold is not None:
        print(f"decision threshold (validation split, F1-max on simulated anomalies): {result.threshold:.4f}")
    return 0


# ------------------------------------------------------------------------------ memseg evaluate
def _default_out(checkpoint: Path, category: str) -> Path:
    """``<run>/eval-<category>`` next to the run's checkpoints folder; a fresh ``-2``, ``-3`` ... if taken."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    base = run / f"eval-{category}"
    candidate, n = base, 1
    while os.path.lexists(candidate / METRICS_JSON) or os.path.lexists(candidate / METRICS_MD):  # links too
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def run_evaluate(args: argparse.Namespace) -> int:
    """`memseg evaluate`: metrics of a checkpoint on the test split; writes metrics.json/.md.

    The output folder is checked before the model or the data are loaded.
    """
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else _default_out(ckpt, args.category)
    check_output_dir(out, "--out")
    result = evaluate(ckpt, args.data, args.category, layout=args.layout, out=out,
                      batch_size=args.batch_size, device=args.device, backend=getattr(args, "backend", "auto"))
    o = result["overall"]
    print(f"{result['category']}: image AUROC {pct(o['image_auroc'])}  pixel AUROC {pct(o['pixel_auroc'])}  "
          f"AUPRO@0.3 {pct(o['aupro'])}  image F1-max {pct(o['f1_max'])} (calling every image anomalous: "
          f"{pct(f1_baseline(o))})  ({o['n_images']} images, {o['n_anomalous']} anomalous, step {result['step']})")
    print(f"metrics: {out / METRICS_JSON}, {out / METRICS_MD}")
    return 0


# -------------------------------------------------------------------------------- memseg export
def run_export(args: argparse.Namespace) -> int:
    """`memseg export`: write the ONNX file, checked against PyTorch, and say how to use it."""
    out = export_onnx(args.checkpoint, args.out, overwrite=args.overwrite)
    size_mb = out.stat().st_size / 2**20
    print(f"exported {args.checkpoint} -> {out} ({size_mb:.1f} MB, opset {OPSET}, dynamic batch; maps match PyTorch "
          "within 1e-4)")
    print(f"run it: memseg predict --checkpoint {out} IMAGES  (or evaluate; onnxruntime, no torch model code needed)")
    return 0


# ----------------------------------------------------------------------------- memseg benchmark
def _comma_list(text: str, flag: str, kind: type = str) -> list:
    """``"a,b"`` -> ``["a", "b"]`` (``kind`` applied to each); a one-line error naming ``flag`` otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{flag} expects a comma-separated list of {kind.__name__}s, e.g. "
                         f"{'0,1,2' if kind is int else 'bottle,cable'}; got {text!r}")
    return values


def run_benchmark(args: argparse.Namespace) -> int:
    """`memseg benchmark`: train + evaluate categories x seeds, print a line per run, write the table."""
    from memseg.engine.benchmark import RESULTS_JSON, RESULTS_MD
    from memseg.engine.benchmark import run_benchmark as benchmark

    seeds = _comma_list(args.seeds, "--seeds", int)
    categories = _comma_list(args.categories, "--categories")
    check_output_dir(args.out, "--out")
    check_hub_timeout()
    if args.size is not None:  # a size the machine cannot hold is refused before any run starts
        check_training_fits("memseg", {"memory_size": 1}, as_size(args.size, "--size"), 8, options_source="--size",
                            size_source=f"--size {args.size}", hint="lower --size", device=args.device)
    textures = locate_dtd(args.dtd)
    print(textures.describe())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="textures: no DTD found")  # printed just above
            results = benchmark(args.data, args.out, categories, seeds, steps=args.steps, size=args.size,
                                weights=args.weights, device=args.device, dtd=str_or_none(textures.path))
    except KeyboardInterrupt:
        print(f"memseg benchmark: interrupted; run the same command again to resume (finished runs under {args.out} "
              "are skipped)", file=sys.stderr)
        return 130
    out = Path(args.out)
    print(out.joinpath(RESULTS_MD).read_text())
    print(f"results: {out / RESULTS_JSON}, {out / RESULTS_MD} ({len(results['categories'])} categories, "
          f"seeds {', '.join(map(str, seeds))})")
    return 0
