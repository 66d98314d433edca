"""The demo's service layer and the Streamlit app itself (streamlit.testing), on tiny checkpoints."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlcv import service

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_list_and_classify(tmp_ckpt):
    infos = service.list_models(tmp_ckpt.parent)
    assert [i.name for i in infos] == ["ckpt"] and infos[0].labels == [str(d) for d in range(10)]
    model, _ = service.load(infos[0].path)
    probs, note = service.classify(model, Image.new("RGBA", (40, 30), (255, 0, 0, 255)))
    assert probs.shape == (10,) and np.isclose(probs.sum(), 1.0, atol=1e-5)
    assert note == "converted RGBA -> RGB, 40x30 -> 28x28"


def test_empty_folder_lists_nothing(tmp_path):
    assert service.list_models(tmp_path) == [] and service.list_models(tmp_path / "absent") == []


@pytest.mark.parametrize("with_models", [True, False])
def test_app_runs(tmp_ckpt, tmp_path, monkeypatch, with_models):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DLCV_CHECKPOINTS", str(tmp_ckpt.parent if with_models else tmp_path / "none"))
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    if with_models:
        assert app.dataframe and app.selectbox[0].value == "ckpt"
    else:
        assert "No checkpoints found" in app.info[0].value


def test_uda_rows_name_the_one_accuracy_the_readme_shows():
    from types import SimpleNamespace

    info = SimpleNamespace(name="uda_source_only_mnistm_to_usps",
                           metrics={"target_test_acc": 0.20854, "last_step_target_test_acc": 0.1857,
                                    "selected_by": "labelled_val", "labelled_val_acc": 0.91875,
                                    "oracle_target_test_acc": 0.28103})
    (row,) = service.uda_rows({"source_only": info})
    assert row["target test accuracy"] == 0.20854 and row["checkpoint chosen by"] == "labelled val accuracy"
    assert 0.1857 not in row.values()  # the last step's figure is not shown under a look-alike name
