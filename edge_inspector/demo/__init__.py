"""The offline demo: a synthetic conveyor camera and the bundled demo defect model."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_MODEL = DEMO_DIR / "model" / "demo-defects.pt"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"

__all__ = ["DEMO_CONFIG", "DEMO_DIR", "DEMO_MODEL"]
