"""The UDA table (training pool, report, t-SNE, shipping): dlcv/uda_table.py; `python scripts/uda_table.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv.uda_table import main  # noqa: E402

if __name__ == "__main__":
    main()
