"""One full training step of ``deformable_detr_r50``: ours vs ``transformers``, on CPU.

A step is: forward, loss (Hungarian matching + focal / L1 / GIoU losses, auxiliary
decoder losses included), backward, ``clip_grad_norm_(0.1)`` and an AdamW update, on
B=2 random 256x256 images with random targets (the same batch for both models).

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/train_step_vs_transformers.py
    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/train_step_vs_transformers.py --steps 9 --warmup 2

Both models use the official recipe's sizes (ResNet-50 randomly initialised with frozen
BatchNorm and stem + layer1 frozen; d_model 256, 6 + 6 layers, FFN 1024, 300 queries,
4 levels, 4 points, 8 heads, auxiliary losses). ``transformers`` runs its pure-PyTorch
``grid_sample`` deformable attention: hub kernels are switched off (``USE_HUB_KERNELS=0``)
and the hub is kept offline, so nothing is downloaded.

The two models alternate on every repeat (ours, theirs, ours, theirs, ...) after the
warm-up steps, so background load on the shared machine hits both alike; the medians
are reported. Then one step of ours is run under ``torch.profiler`` and the top ops by
self CPU time are printed. Everything goes to ``benchmarks/results/train_step_cpu.json``.
"""
from __future__ import annotations

import os

# Before transformers is imported: no hub kernels, no network.
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ddetr_lib.config import get_config  # noqa: E402
from ddetr_lib.models import build_criterion, build_model  # noqa: E402
from ddetr_lib.optim import build_optimizer  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "train_step_cpu.json"


def random_batch(batch_size: int, size: int, num_classes: int, generator: torch.Generator):
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, size, size, generator=generator))
        k = int(torch.randint(1, 8, (1,), generator=generator))
        centre = torch.rand(k, 2, generator=generator) * 0.6 + 0.2
        wh = torch.rand(k, 2, generator=generator) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, num_classes, (k,), generator=generator, dtype=torch.int64),
                        "boxes": torch.cat([centre, wh], dim=1)})
    return images, targets


# ---------------------------------------------------------------------------- ours
class Ours:
    name = "ours"

    def __init__(self, num_classes: int):
        self.cfg = get_config("deformable_detr_r50", pretrained_backbone=False, num_classes=num_classes)
        torch.manual_seed(0)
        self.model = build_model(self.cfg)
        self.model.train()
        self.criterion = build_criterion(self.cfg)
        self.criterion.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, self.cfg)  # exactly what training uses
        self.phases: dict[str, list[float]] = {"forward": [], "criterion": [], "backward": [], "clip+step": []}

    def step(self, images, targets, record_phases: bool = False) -> float:
        t0 = time.perf_counter()
        with torch.profiler.record_function("ours::forward"):
            outputs = self.model(images)
        t1 = time.perf_counter()
        with torch.profiler.record_function("ours::criterion"):
            loss_dict = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
        t2 = time.perf_counter()
        with torch.profiler.record_function("ours::backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        t3 = time.perf_counter()
        with torch.profiler.record_function("ours::clip+step"):
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_max_norm)
            self.optimizer.step()
        t4 = time.perf_counter()
        if record_phases:
            for key, dt in zip(self.phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                self.phases[key].append(dt * 1e3)
        return float(loss.detach())


# ---------------------------------------------------------------------------- theirs
class Theirs:
    name = "transformers"

    def __init__(self, num_classes: int, cfg, match_recipe: bool = True):
        import transformers
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection
        from transformers.models.deformable_detr import modeling_deformable_detr as mdd

        self.config = DeformableDetrConfig(
            use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
            num_labels=num_classes, d_model=cfg.hidden_dim,
            encoder_layers=cfg.enc_layers, decoder_layers=cfg.dec_layers,
            encoder_ffn_dim=cfg.dim_feedforward, decoder_ffn_dim=cfg.dim_feedforward,
            encoder_attention_heads=cfg.nheads, decoder_attention_heads=cfg.nheads,
            num_queries=cfg.num_queries, num_feature_levels=cfg.num_feature_levels,
            encoder_n_points=cfg.enc_n_points, decoder_n_points=cfg.dec_n_points,
            dropout=cfg.dropout, auxiliary_loss=cfg.aux_loss,
            # The official recipe (and ours) also drops out after the FFN activation and
            # inside the decoder's self-attention; transformers' defaults for these are 0.
            **({"activation_dropout": cfg.dropout, "attention_dropout": cfg.dropout} if match_recipe else {}),
            with_box_refine=cfg.with_box_refine, two_stage=cfg.two_stage,
            # (these fields are typed int in the config; the recipe's values are whole numbers)
            class_cost=int(cfg.set_cost_class), bbox_cost=int(cfg.set_cost_bbox), giou_cost=int(cfg.set_cost_giou),
            bbox_loss_coefficient=int(cfg.bbox_loss_coef), giou_loss_coefficient=int(cfg.giou_loss_coef),
            focal_alpha=cfg.focal_alpha, disable_custom_kernels=True,
        )
        torch.manual_seed(0)
        self.model = DeformableDetrForObjectDetection(self.config)
        self.model.train()
        self.clip = cfg.clip_max_norm
        self.match_recipe = match_recipe
        if match_recipe:
            # The official recipe trains only layer2-4 of the ResNet (ours does too).
            # transformers means to freeze the stem and layer1 as well, but its check looks
            # for "resnet" in the backbone config's model_type, which is "timm_backbone"
            # here, so nothing gets frozen; freeze them by hand for a like-for-like step.
            for name, p in self.model.model.backbone.named_parameters():
                if not any(f"layer{i}" in name for i in (2, 3, 4)):
                    p.requires_grad_(False)
        # Which deformable attention runs: the class's forward must be the module's own
        # (a hub kernel would replace it); report where it comes from.
        attn_cls = mdd.MultiScaleDeformableAttention
        self.attention_impl = f"{attn_cls.forward.__module__}.{attn_cls.forward.__qualname__}"
        if attn_cls.forward.__module__ != mdd.__name__:
            raise RuntimeError(f"transformers' deformable attention is not its own PyTorch code: {self.attention_impl}")
        from transformers.utils import is_kernels_available
        self.kernels_available = bool(is_kernels_available())
        self.version = transformers.__version__
        # The same three learning-rate groups as ours (official recipe).
        groups = {"backbone": [], "linear_proj": [], "rest": []}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if ".backbone." in name or name.startswith("backbone."):
                groups["backbone"].append(p)
            elif "sampling_offsets" in name or "reference_points" in name:
                groups["linear_proj"].append(p)
            else:
                groups["rest"].append(p)
        param_groups = [{"params": groups["rest"], "lr": cfg.lr},
                        {"params": groups["backbone"], "lr": cfg.lr_backbone},
                        {"params": groups["linear_proj"], "lr": cfg.lr * cfg.lr_linear_proj_mult}]
        self.group_sizes = {k: sum(p.numel() for p in v) for k, v in groups.items()}
        self.params = [p for g in param_groups for p in g["params"]]
        # the same optimizer implementation as ours (batched foreach update)
        self.optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)

    def step(self, images, targets, record_phases: bool = False) -> float:
        pixel_values = torch.stack(images)
        pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long)
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return float(out.loss.detach())


def n_params(model: torch.nn.Module, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (alternating)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--top", type=int, default=15, help="rows of the profile table")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--transformers-defaults", action="store_true",
                    help="run transformers as shipped (stem + layer1 trainable, no activation / attention "
                         "dropout) instead of matched to the official recipe")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    num_classes = 91
    ours = Ours(num_classes)
    theirs = Theirs(num_classes, ours.cfg, match_recipe=not args.transformers_defaults)
    print(f"torch {torch.__version__}, transformers {theirs.version}, threads {torch.get_num_threads()}, "
          f"B={args.batch_size}, {args.size}x{args.size}")
    print(f"params (trainable / total): ours {n_params(ours.model, True):,} / {n_params(ours.model, False):,}; "
          f"transformers {n_params(theirs.model, True):,} / {n_params(theirs.model, False):,}")
    print(f"transformers deformable attention: {theirs.attention_impl} "
          f"(kernels package available: {theirs.kernels_available})")

    g = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch_size, args.size, num_classes, g) for _ in range(args.warmup + args.steps)]
    times = {"ours": [], "transformers": []}
    first_step_ms = {}
    for i, (images, targets) in enumerate(batches):
        timed = i >= args.warmup
        for runner in (ours, theirs):
            t0 = time.perf_counter()
            loss = runner.step(images, targets, record_phases=timed)
            dt = (time.perf_counter() - t0) * 1e3
            if i == 0:
                first_step_ms[runner.name] = dt
            if timed:
                times[runner.name].append(dt)
            print(f"  step {i} {'timed' if timed else 'warm-up'} {runner.name:>12}: {dt:8.1f} ms  loss {loss:.3f}",
                  flush=True)

    ours_ms = statistics.median(times["ours"])
    theirs_ms = statistics.median(times["transformers"])
    ratio = theirs_ms / ours_ms
    phases = {k: statistics.median(v) for k, v in ours.phases.items()}
    print(f"\nmedian ms/step: ours {ours_ms:.1f}, transformers {theirs_ms:.1f}; "
          f"ratio transformers/ours = {ratio:.2f}x (target >= 1.5x)")
    print("ours by phase (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))

    profile = None
    if not args.no_profile:
        images, targets = batches[-1]
        from torch.profiler import ProfilerActivity, profile as torch_profile
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            ours.step(images, targets)
        averages = prof.key_averages()
        rows = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
        total_self_us = sum(e.self_cpu_time_total for e in averages)
        top = [{"name": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_cpu_pct": 100.0 * e.self_cpu_time_total / total_self_us if total_self_us else 0.0,
                "cpu_total_ms": e.cpu_time_total / 1e3, "calls": e.count}
               for e in rows[:args.top]]
        phase_rows = {e.key: e.cpu_time_total / 1e3 for e in averages if e.key.startswith("ours::")}
        table = averages.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48)
        print(f"\nprofile of one step of ours (top {args.top} by self CPU time):")
        print(table)
        print("ours phases under the profiler (CPU total ms): "
              + ", ".join(f"{k[6:]} {v:.1f}" for k, v in phase_rows.items()))
        profile = {"total_self_cpu_ms": total_self_us / 1e3, "top_self_cpu": top,
                   "phases_cpu_total_ms": phase_rows, "table": table}

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "transformers": theirs.version,
        "threads": torch.get_num_threads(),
        "config": "deformable_detr_r50", "batch_size": args.batch_size, "image_size": [args.size, args.size],
        "num_classes": num_classes, "warmup": args.warmup, "steps": args.steps,
        "transformers_matched_to_recipe": theirs.match_recipe,
        "trainable_params": {"ours": n_params(ours.model, True), "transformers": n_params(theirs.model, True)},
        "transformers_attention": theirs.attention_impl,
        "transformers_kernels_available": theirs.kernels_available,
        "ours_ms_per_step": ours_ms, "transformers_ms_per_step": theirs_ms,
        "ratio_transformers_over_ours": ratio,
        "ours_ms_all": times["ours"], "transformers_ms_all": times["transformers"],
        "first_step_ms": first_step_ms,
        "ours_phases_median_ms": phases,
        "profile_ours": profile,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
