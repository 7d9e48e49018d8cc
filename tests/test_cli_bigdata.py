"""``unetkit predict`` with zarr outputs, patterns and folders, and dask clusters."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile
import torch

zarr = pytest.importorskip("zarr")

from napari_unetkit import chunked  # noqa: E402
from napari_unetkit.cli import main  # noqa: E402
from napari_unetkit.model import UNet, UNetConfig  # noqa: E402
from napari_unetkit.modelfile import save_model  # noqa: E402
from napari_unetkit.normalization import NormalizationSettings  # noqa: E402
from napari_unetkit.prediction import Predictor  # noqa: E402
from napari_unetkit.progress import Cancelled  # noqa: E402
from napari_unetkit.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = ["--device", "cpu", "--precision", "float32", "--tile-size", "32"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    config = UNetConfig(depth=2, base_channels=4, dropout=0.0)
    model = UNet(config).eval()
    description = {
        "architecture": config.to_dict(),
        "mode": "instances",
        "normalization": NormalizationSettings().to_dict(),
        "class_names": ["nucleus"],
    }
    return save_model(tmp_path_factory.mktemp("model") / "cells.unet", model, description)


def engine(model_file) -> Predictor:
    return Predictor.from_file(model_file, device="cpu", precision="float32", tile_size=32)


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_tiff_in_zarr_out_with_pixel_size_and_probabilities(model_file, tmp_path, capsys):
    stack = np.stack([synthetic_nuclei((40, 48), seed=s)[0] for s in range(2)])
    tifffile.imwrite(tmp_path / "in.tif", stack, tile=(16, 16), resolution=(2.0, 2.0))
    out = tmp_path / "out.ome.zarr"
    args = ["predict", "--model", str(model_file), "--image", str(tmp_path / "in.tif")]
    assert main([*args, "--out", str(out), "--probabilities", "--chunk-size", "16", *CPU]) == 0
    assert "Labels written" in capsys.readouterr().out
    root = zarr.open_group(str(out), mode="r")
    expected = engine(model_file).predict(stack, return_probabilities=True)
    assert same_up_to_renumbering(root["0"][...], expected.labels)
    np.testing.assert_allclose(root["probabilities/0"][...], expected.probabilities, atol=2e-6)
    image = root.attrs["multiscales"][0]
    assert image["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    # Done already: the same command resumes nothing and succeeds; other settings are refused.
    assert main([*args, "--out", str(out), "--probabilities", "--chunk-size", "16", *CPU]) == 0
    assert "2 of 2 parts were already done" in capsys.readouterr().out
    assert main([*args, "--out", str(out), "--threshold", "0.7", *CPU]) == 1
    assert "other settings" in capsys.readouterr().err


def test_zarr_in_zarr_out(model_file, tmp_path):
    image = synthetic_nuclei((64, 80), seed=1)[0]
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(16, 16),
                               dtype=image.dtype)  # fmt: skip
    source[...] = image
    out = tmp_path / "out.zarr"
    assert main(["predict", "--model", str(model_file), "--image", str(tmp_path / "in.zarr"),
                 "--out", str(out), *CPU]) == 0  # fmt: skip
    labels = zarr.open_array(str(out / "0"), mode="r")[...]
    assert same_up_to_renumbering(labels, engine(model_file).predict(image).labels)


def test_probabilities_without_a_name_need_a_zarr_or_folder_output(model_file, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "in.tif", synthetic_nuclei((32, 32), seed=0)[0])
    code = main(["predict", "--model", str(model_file), "--image", str(tmp_path / "in.tif"),
                 "--out", str(tmp_path / "o.tif"), "--probabilities", *CPU])  # fmt: skip
    assert code == 1 and "needs a TIFF file name" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.slow
def test_a_folder_batch_reports_a_broken_file_and_goes_on(model_file, tmp_path, capsys):
    plate = tmp_path / "plate"
    plate.mkdir()
    images = {}
    for name, seed in (("a1", 0), ("a3", 2)):
        images[name] = synthetic_nuclei((40, 40), seed=seed)[0]
        tifffile.imwrite(plate / f"{name}.tif", images[name])
    (plate / "a2.tif").write_bytes(b"not a tiff at all")
    (plate / "notes.txt").write_text("ignored")
    results = tmp_path / "results"
    command = ["predict", "--model", str(model_file), "--image", str(plate / "*.tif"), "--out",
               str(results), "--probabilities", *CPU]  # fmt: skip
    assert main(command) == 1
    captured = capsys.readouterr()
    assert "2 written, 0 skipped" in captured.out and "1 failed" in captured.out
    assert "a2.tif" in captured.err and "Traceback" not in captured.err
    assert sorted(p.name for p in results.iterdir()) == [
        "a1.tif", "a1_probabilities.tif", "a3.tif", "a3_probabilities.tif"
    ]  # fmt: skip
    predictor = engine(model_file)
    for name, image in images.items():
        np.testing.assert_array_equal(
            tifffile.imread(results / f"{name}.tif"), predictor.predict(image).labels
        )
    # A rerun skips what exists; a folder works like a pattern; zarr outputs on request.
    before = (results / "a1.tif").stat().st_mtime_ns
    assert main(command) == 1
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert (results / "a1.tif").stat().st_mtime_ns == before
    folder = ["predict", "--model", str(model_file), "--image", str(plate), "--out",
              str(tmp_path / "z"), "--format", "zarr", *CPU]  # fmt: skip
    assert main(folder) == 1
    labels = zarr.open_array(str(tmp_path / "z" / "a3.ome.zarr" / "0"), mode="r")[...]
    assert same_up_to_renumbering(labels, predictor.predict(images["a3"]).labels)


def test_a_colour_image_with_a_grey_model_is_refused(model_file, tmp_path, capsys):
    np.save(tmp_path / "rgb.npy", np.zeros((32, 32, 3), np.uint8))
    code = main(["predict", "--model", str(model_file), "--image", str(tmp_path / "rgb.npy"),
                 "--out", str(tmp_path / "o.zarr"), *CPU])  # fmt: skip
    assert code == 1 and "colour image" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_no_match_is_one_line(model_file, tmp_path, capsys):
    code = main(["predict", "--model", str(model_file), "--image", str(tmp_path / "*.tif"),
                 "--out", str(tmp_path / "r"), *CPU])  # fmt: skip
    assert code == 1 and "No images" in capsys.readouterr().err


# ----------------------------------------------------------------------------- distributed


@pytest.mark.slow
def test_two_workers_equal_one_process(model_file, tmp_path):
    distributed = pytest.importorskip("distributed")
    image = synthetic_nuclei((96, 80), seed=3)[0]
    np.save(tmp_path / "in.npy", image)
    predictor = engine(model_file)
    options = {"chunk": 16, "block": 32, "margin": 24, "plane_pixels": 1, "probabilities": True}
    single = chunked.predict_to_zarr(predictor, image, tmp_path / "one.zarr", **options)
    job = chunked.worker_job(
        model_file, tmp_path / "in.npy", device="cpu", precision="float32", tile_size=32
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        result = chunked.predict_to_zarr(
            predictor, image, tmp_path / "two.zarr", client=client, job=job, **options
        )
        workers = client.run(lambda: sorted(k[0] for k in chunked._WORKER_CACHE))
    assert result.units == single.units == 9 and result.computed == 9
    for name in ("0", "probabilities/0"):
        np.testing.assert_array_equal(
            zarr.open_array(str(tmp_path / "two.zarr" / name), mode="r")[...],
            zarr.open_array(str(tmp_path / "one.zarr" / name), mode="r")[...],
        )
    # In-process workers share one cache: one predictor for the model, one image, one store.
    assert all(kinds == ["image", "predictor", "store"] for kinds in workers.values())


@pytest.mark.slow
def test_a_cluster_run_stopped_half_way_resumes_to_the_same_result(model_file, tmp_path):
    distributed = pytest.importorskip("distributed")
    image = synthetic_nuclei((64, 96), seed=6)[0]
    np.save(tmp_path / "in.npy", image)
    predictor = engine(model_file)
    options = {"chunk": 16, "block": 32, "margin": 24, "plane_pixels": 1}
    chunked.predict_to_zarr(predictor, image, tmp_path / "one.zarr", **options)
    job = chunked.worker_job(
        model_file, tmp_path / "in.npy", device="cpu", precision="float32", tile_size=32
    )
    cancel = threading.Event()

    def stop_at_half(done, total):
        if done >= total / 2:
            cancel.set()

    out = tmp_path / "two.zarr"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with pytest.raises(Cancelled):
            chunked.predict_to_zarr(
                predictor, image, out, client=client, job=job, progress=stop_at_half,
                cancel=cancel, **options,
            )  # fmt: skip
        finished = len(chunked.done_units(out))
        assert finished == 3
        result = chunked.predict_to_zarr(predictor, image, out, client=client, job=job, **options)
    assert result.computed == 6 - finished
    np.testing.assert_array_equal(
        zarr.open_array(str(out / "0"), mode="r")[...],
        zarr.open_array(str(tmp_path / "one.zarr" / "0"), mode="r")[...],
    )


@pytest.mark.slow
def test_workers_option_runs_a_local_cluster(model_file, tmp_path):
    pytest.importorskip("distributed")
    image = synthetic_nuclei((64, 48), seed=4)[0]
    np.save(tmp_path / "in.npy", image)
    out = tmp_path / "out.zarr"
    command = [sys.executable, "-m", "napari_unetkit.cli", "predict", "--model",
               str(model_file), "--image", str(tmp_path / "in.npy"), "--out", str(out),
               "--workers", "2", *CPU]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    labels = zarr.open_array(str(out / "0"), mode="r")[...]
    assert same_up_to_renumbering(labels, engine(model_file).predict(image).labels)


@pytest.mark.slow
def test_local_cluster_workers_keep_the_adaptive_allocator(monkeypatch):
    distributed = pytest.importorskip("distributed")
    import dask

    # dask's default gives every worker MALLOC_TRIM_THRESHOLD_; the product's cluster does not.
    default = dask.config.get("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" in default
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with (
        chunked.start_local_cluster(1) as cluster,
        distributed.Client(cluster) as client,
    ):
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.getpid()))
    ((trim, pid),) = seen.values()
    assert trim is None and pid != os.getpid()  # a separate worker process
