"""Train the bundled demo defect model on synthetic conveyor frames, from scratch and offline.

    python -m edge_inspector.demo.train            # what `make demo-model` runs
    python -m edge_inspector.demo.train --device 0 --hours 0.085 --workers 12
                                                   # how the bundled model was made (one H100)

Generates a training and a held-out validation set with the demo's own renderer (different
seeds), trains a YOLO nano model from its yaml (no download), validates it on the held-out set
and writes `model/demo-defects.pt` and `model/metrics.json` (mAP50 per class).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ..detect.runtime import prepare_ultralytics, use_threads_for
from . import DEMO_MODEL
from .synthetic import DEFECT_CLASSES, random_scene

__all__ = ["make_dataset", "train"]


def make_dataset(
    root: Path,
    *,
    train_images: int,
    val_images: int,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
) -> Path:
    """Write a YOLO dataset (images, labels, data.yaml) under `root`; return data.yaml."""
    for split, count, split_seed in (
        ("train", train_images, seed),
        ("val", val_images, seed + 10_000),
    ):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(split_seed)
        for i in range(count):
            scene = random_scene(rng, width=width, height=height)
            cv2.imwrite(str(images / f"{i:05d}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            lines = []
            for truth in scene.truths:
                x1, y1, x2, y2 = truth.box
                cls = DEFECT_CLASSES.index(truth.class_name)
                lines.append(
                    f"{cls} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                    f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
                )
            (labels / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(DEFECT_CLASSES))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def train(
    *,
    out: Path,
    epochs: int,
    imgsz: int,
    train_images: int,
    val_images: int,
    base: str = "yolo11n.yaml",
    device: str = "cpu",
    seed: int = 0,
    batch: int = 16,
    workers: int = 2,
    hours: float | None = None,
) -> dict[str, object]:
    """Train, validate on the held-out set, copy the weights to `out`; return the figures."""
    prepare_ultralytics()
    from ultralytics import YOLO

    use_threads_for("pytorch")
    with tempfile.TemporaryDirectory(prefix="edge-inspector-train-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        data = make_dataset(
            work / "data", train_images=train_images, val_images=val_images, seed=seed
        )
        print(
            f"dataset: {train_images} training and {val_images} validation images "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        model = YOLO(base, task="detect")
        model.train(
            data=str(data),
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            device=device,
            workers=workers,
            project=str(work / "runs"),
            name="demo",
            exist_ok=True,
            seed=seed,
            deterministic=True,
            plots=False,
            amp=False,
            verbose=False,
            patience=0,
            fliplr=0.5,
            flipud=0.5,
            mosaic=1.0,
            close_mosaic=5,
            **({"time": hours} if hours else {}),
        )
        best = work / "runs" / "demo" / "weights" / "best.pt"
        trained = YOLO(str(best), task="detect")
        metrics = trained.val(
            data=str(data),
            split="val",
            imgsz=imgsz,
            device=device,
            batch=16,
            plots=False,
            verbose=False,
            project=str(work / "runs"),
            name="val",
        )
        per_class = {
            trained.names[int(c)]: round(float(ap50), 4)
            for c, ap50 in zip(metrics.box.ap_class_index, metrics.box.ap50, strict=True)
        }
        figures: dict[str, object] = {
            "model": base,
            "epochs": epochs,
            "imgsz": imgsz,
            "train_images": train_images,
            "val_images": val_images,
            "seed": seed,
            "device": device,
            "hours": hours,
            "batch": batch,
            "map50": round(float(metrics.box.map50), 4),
            "map50_95": round(float(metrics.box.map), 4),
            "map50_per_class": per_class,
            "train_seconds": round(time.monotonic() - started),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, out)
        (out.parent / "metrics.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEMO_MODEL)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--val-images", type=int, default=120)
    parser.add_argument("--base", default="yolo11n.yaml")
    parser.add_argument("--device", default="cpu", help="cpu, or a GPU index such as 0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--hours", type=float, help="train for this long instead of --epochs")
    args = parser.parse_args(argv)
    figures = train(
        out=args.out,
        epochs=args.epochs,
        imgsz=args.imgsz,
        train_images=args.train_images,
        val_images=args.val_images,
        base=args.base,
        device=args.device,
        batch=args.batch,
        workers=args.workers,
        hours=args.hours,
    )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
