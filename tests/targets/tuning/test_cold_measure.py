"""Tuning with cold weights: the cache size, which stages qualify, the evaluator, and the second database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import nndeploy
from test_tuning import ONE_SERVER, avx2_host, matmul_model

from nndeploy.errors import BuildError
from nndeploy.targets.tuning import cold as cold_measure
from nndeploy.targets.tuning import database as tuning_db


def write_cache(folder: Path, index: int, level: int, kind: str, size: str) -> None:
    entry = folder / f"index{index}"
    entry.mkdir(parents=True)
    (entry / "level").write_text(f"{level}\n")
    (entry / "type").write_text(f"{kind}\n")
    (entry / "size").write_text(f"{size}\n")


def test_the_last_level_cache_is_read_from_the_os(tmp_path: Path) -> None:
    write_cache(tmp_path, 0, 1, "Data", "48K")
    write_cache(tmp_path, 1, 1, "Instruction", "32K")
    write_cache(tmp_path, 2, 2, "Unified", "1024K")
    write_cache(tmp_path, 3, 3, "Unified", "32768K")
    assert cold_measure._last_level_cache_bytes(tmp_path) == 32 << 20
    assert cold_measure._last_level_cache_bytes(tmp_path / "missing") is None


def test_the_cache_size_can_be_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cold_measure.LLC_ENV, "2M")
    assert cold_measure.last_level_cache_bytes() == 2 << 20
    monkeypatch.setenv(cold_measure.LLC_ENV, "lots")
    with pytest.raises(BuildError, match="NNDEPLOY_LLC_BYTES='lots' is not a size"):
        cold_measure.last_level_cache_bytes()


def test_a_stage_is_cold_when_its_weights_exceed_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    model = matmul_model(0, "m")
    assert cold_measure.weight_bytes(model) == (64 * 32 + 32) * 4
    monkeypatch.setenv(cold_measure.LLC_ENV, str(64 * 32 * 4))
    assert cold_measure.weights_cold(model)
    monkeypatch.setenv(cold_measure.LLC_ENV, "32M")
    assert not cold_measure.weights_cold(model)


class _Arg:
    def __init__(self) -> None:
        self.reads = 0

    def numpy(self) -> None:
        self.reads += 1


class _Module:
    entry_name = "main"

    def __init__(self) -> None:
        self.calls = 0

    def __getitem__(self, name: str):  # type: ignore[no-untyped-def]
        def kernel(*args: object) -> None:
            self.calls += 1

        return kernel


class _Device:
    def sync(self) -> None:
        pass


class _Config:
    repeat = 5


def test_the_evaluator_reads_back_everything_but_the_weights() -> None:
    module = _Module()
    data, weight, bias, out = _Arg(), _Arg(), _Arg(), _Arg()
    seconds = cold_measure.run_evaluator_cold_weights(
        (1, 2), module, _Device(), _Config(), [[data, weight, bias, out]]
    )
    assert len(seconds) == 1 and seconds[0] >= 0  # one median per argument set
    assert module.calls == 1 + 5  # a warm-up run, then the timed ones
    assert (data.reads, out.reads) == (5, 5)
    assert (weight.reads, bias.reads) == (0, 0)


def test_the_cold_database_is_part_of_the_fingerprint_and_the_export(tmp_path: Path) -> None:
    cold = tuning_db.cold_dir(tmp_path)
    cold.mkdir()
    (cold / tuning_db.WORKLOADS).write_text('["111", {}]\n')
    (cold / tuning_db.RECORDS).write_text('[0, [["a"], [0.002], {}, []]]\n[0, [["b"], [0.001], {}, []]]\n')
    assert tuning_db.has_records(tmp_path)  # only cold records
    before = tuning_db.fingerprint(tmp_path)
    (tmp_path / tuning_db.WORKLOADS).write_text('["222", {}]\n')
    (tmp_path / tuning_db.RECORDS).write_text('[0, [["c"], [0.003], {}, []]]\n')
    assert tuning_db.fingerprint(tmp_path) != before
    shipped = tmp_path / "shipped"
    assert tuning_db.export_best(tmp_path, shipped) == (2, 2)
    assert tuning_db.trials_per_workload(tuning_db.cold_dir(shipped)) == {"111": 1}
    kept = json.loads((tuning_db.cold_dir(shipped) / tuning_db.RECORDS).read_text())
    assert kept[1][0] == ["b"]


@pytest.mark.slow
@pytest.mark.skipif(not avx2_host(), reason="this CPU cannot run the AVX2 server's code")
def test_a_cold_stage_is_tuned_from_the_warm_records_into_its_own_database(tmp_path: Path) -> None:
    import onnx

    (tmp_path / "one.yaml").write_text(ONE_SERVER)
    onnx.save(matmul_model(0, "m"), tmp_path / "m.onnx")
    plan = tmp_path / "m.json"
    assert (
        nndeploy("plan", tmp_path / "m.onnx", "--cluster", tmp_path / "one.yaml", "-o", plan).returncode == 0
    )
    db = tmp_path / "tuning"
    big_cache = {cold_measure.LLC_ENV: "32M"}
    tiny_cache = {cold_measure.LLC_ENV: "1K"}

    warm = nndeploy("tune", plan, "--budget", "1s", "--db", db, "--trials-per-task", "4", env=big_cache)
    assert warm.returncode == 0, warm.stderr
    (folder,) = [p for p in db.iterdir() if p.is_dir()]
    warm_records = (folder / tuning_db.RECORDS).read_bytes()
    assert not tuning_db.cold_dir(folder).exists()

    # The weights no longer fit: the task is timed again with its weights evicted, starting from the
    # warm records (4, so the 4 trials are all re-timings), into the cold database; the warm one is kept.
    cold = nndeploy("tune", plan, "--budget", "1s", "--db", db, "--trials-per-task", "4", env=tiny_cache)
    assert cold.returncode == 0, cold.stderr
    assert "4 trials measured" in cold.stdout
    assert sorted(tuning_db.trials_per_workload(tuning_db.cold_dir(folder)).values()) == [4]
    assert (folder / tuning_db.RECORDS).read_bytes() == warm_records

    builds = {}
    for name, env in (("warm", big_cache), ("cold", tiny_cache)):
        builds[name] = tmp_path / name
        done = nndeploy("compile", plan, "-o", builds[name], "--db", db, env=env)
        assert done.returncode == 0, done.stderr
        options = json.loads((builds[name] / "manifest.json").read_text())["stages"][0]["artifact"]["options"]
        assert options["weights_cold"] is (name == "cold")
        verified = nndeploy("verify", builds[name], "--samples", "1")
        assert verified.returncode == 0, verified.stdout + verified.stderr

    # A cache size that is not one: a clear error from both verbs, no traceback.
    bad = {cold_measure.LLC_ENV: "lots"}
    for verb in (
        ("tune", plan, "--budget", "1s", "--db", db),
        ("compile", plan, "-o", tmp_path / "x", "--db", db),
    ):
        done = nndeploy(*verb, env=bad)
        assert done.returncode != 0
        assert "NNDEPLOY_LLC_BYTES='lots' is not a size" in done.stderr + done.stdout
        assert "Traceback" not in done.stderr + done.stdout
