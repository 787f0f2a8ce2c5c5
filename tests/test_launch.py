import pytest
import torch
import transformers

from hf_intertrain import InterTrainArguments
from hf_intertrain.launch import check_processes_share_work, end_processes, launched_on_cpu, launched_world_size

TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                    "MV2_COMM_WORLD_SIZE", "ACCELERATE_USE_CPU")


@pytest.fixture
def environ(monkeypatch):
    """os.environ without any launcher's variables; tests add their own."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_launched_world_size_reads_torchrun_and_mpi_variables():
    assert launched_world_size({}) == 1
    assert launched_world_size(TORCHRUN) == 2
    assert launched_world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launched_world_size({"WORLD_SIZE": "", "PMI_SIZE": "x"}) == 1


def test_processes_launched_on_a_machine_without_an_accelerator_run_on_the_cpu():
    assert launched_on_cpu(TORCHRUN, has_accelerator=False)
    assert not launched_on_cpu(TORCHRUN, has_accelerator=True)  # GPUs: each process takes its own
    assert not launched_on_cpu({}, has_accelerator=False)  # one process: the Trainer picks its device itself
    assert launched_on_cpu({"ACCELERATE_USE_CPU": "True"}, has_accelerator=True)  # `accelerate launch --cpu`
    assert not launched_on_cpu({"ACCELERATE_USE_CPU": "False"}, has_accelerator=False)


def test_arguments_hand_transformers_use_cpu_under_accelerates_torchrun_launcher_without_a_gpu(environ, tmp_path):
    # What `accelerate launch --config_file recipes/accelerate/cpu_multi_process.yaml` gives each process (the
    # config's use_cpu is not among it). transformers sets up the devices (and the process group) in its
    # __post_init__ from use_cpu: record what it is handed instead of joining a group of 2.
    handed = []
    environ.setattr(transformers.TrainingArguments, "__post_init__", lambda self: handed.append(self.use_cpu))
    for name, value in TORCHRUN.items():
        environ.setenv(name, value)
    environ.setattr(torch.accelerator, "is_available", lambda: False)
    InterTrainArguments(output_dir=str(tmp_path))
    environ.setattr(torch.accelerator, "is_available", lambda: True)
    InterTrainArguments(output_dir=str(tmp_path))
    assert handed == [True, False]


def test_arguments_without_a_launcher_keep_use_cpu_as_given(environ, tmp_path):
    assert not InterTrainArguments(output_dir=str(tmp_path)).use_cpu
    assert InterTrainArguments(output_dir=str(tmp_path), use_cpu=True).use_cpu
    environ.setenv("ACCELERATE_USE_CPU", "true")
    assert InterTrainArguments(output_dir=str(tmp_path)).use_cpu


def test_processes_that_would_each_train_the_whole_dataset_are_refused():
    with pytest.raises(ValueError, match="2 processes were launched but the Trainer shards over 1") as error:
        check_processes_share_work(1, TORCHRUN, initialized_world_size=1)
    assert "\n" not in str(error.value) and "--use_cpu true" in str(error.value)
    with pytest.raises(ValueError, match="2 processes were launched"):  # a process group of 2, no launcher variables
        check_processes_share_work(1, {}, initialized_world_size=2)
    with pytest.raises(ValueError, match="4 processes were launched but the Trainer shards over 2"):
        check_processes_share_work(2, {"OMPI_COMM_WORLD_SIZE": "4"}, initialized_world_size=1)


def test_processes_that_share_the_work_and_single_processes_pass():
    check_processes_share_work(2, TORCHRUN, initialized_world_size=2)
    check_processes_share_work(1, {}, initialized_world_size=1)
    check_processes_share_work(1, {})  # no process group in this test process


def test_end_processes_tears_down_an_initialized_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    end_processes()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    end_processes()
    assert not dist.is_initialized()


def test_end_processes_waits_for_inductors_compile_workers_a_bounded_time(monkeypatch):
    import sys
    import threading
    import time
    import types

    released = threading.Event()
    calls = []

    def stuck_shutdown():  # a pool still starting when the run failed: inductor would wait up to 5 minutes
        calls.append(threading.current_thread().daemon)
        released.wait(60)

    monkeypatch.setitem(
        sys.modules, "torch._inductor.async_compile", types.SimpleNamespace(shutdown_compile_workers=stuck_shutdown)
    )
    started = time.perf_counter()
    end_processes(grace_seconds=0.2)
    assert time.perf_counter() - started < 5 and calls == [True]
    released.set()
    monkeypatch.delitem(sys.modules, "torch._inductor.async_compile")
    end_processes()  # inductor never imported: nothing to stop
