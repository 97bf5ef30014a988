import pytest

from tokvid import cpu


@pytest.mark.parametrize("runnable, idle", [(1, 4), (2, 3), (3, 2), (9, 1)])
def test_idle_cores_leave_out_the_threads_other_programs_run(tmp_path, monkeypatch, runnable, idle):
    """/proc/loadavg's runnable count includes the caller: 1 runnable on 4 cores leaves all 4 idle."""
    monkeypatch.setattr(cpu, "usable_cores", lambda: 4)
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"1.92 2.03 1.51 {runnable}/345 12345\n")
    assert cpu.idle_cores(str(loadavg)) == idle


def test_without_a_readable_loadavg_every_core_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "usable_cores", lambda: 3)
    assert cpu.idle_cores(str(tmp_path / "missing")) == 3
    (tmp_path / "garbled").write_text("nothing here")
    assert cpu.idle_cores(str(tmp_path / "garbled")) == 3


def test_default_threads_follow_omp_num_threads_else_idle_cores_up_to_torchs(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu.default_threads() is None  # torch already follows it
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(cpu, "idle_cores", lambda: 1)
    assert cpu.default_threads() == 1
    monkeypatch.setattr(cpu, "idle_cores", lambda: 10 ** 6)
    assert cpu.default_threads() == torch.get_num_threads()
