
from gdensify.cli import main
from gdensify.io import load_ply


def test_demo_writes_images_and_ply(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--builtin", "--out", str(out), "--gaussians", "500", "--views", "2", "--resolution", "32",
                 "--backend", "reference"]) == 0
    assert (out / "views.png").is_file() and (out / "view_01.png").is_file()
    assert len(load_ply(out / "trefoil.ply")) == 500
    assert "re-rendered from the .ply" in capsys.readouterr().out
    assert main(["render", str(out / "trefoil.ply"), "--out", str(tmp_path / "r.png"), "--views", "1",
                 "--resolution", "24", "--backend", "reference"]) == 0
    assert (tmp_path / "r.png").is_file()


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["render", str(tmp_path / "missing.ply"), "--backend", "reference"]) == 2
    assert "missing.ply" in capsys.readouterr().err


def test_make_data_objects(tmp_path):
    assert main(["make-data", "objects", str(tmp_path / "objs"), "--count", "1", "--resolution", "32"]) == 0
    assert (tmp_path / "objs").is_dir() and any((tmp_path / "objs").rglob("transforms_train.json"))
