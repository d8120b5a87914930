"""The NVML sampler against the FAKE pynvml: every field, "n/a" for what a GPU does not
support, a GPU that fails mid-run, MIG, XID events, and no library at all."""

from __future__ import annotations

import time

from monitoring.gpu_sampler import GpuSampler
from monitoring.host_sampler import HostSampler
from monitoring.xid import XidWatcher

FIELDS = [
    "util_gpu", "util_mem", "enc_util", "dec_util", "mem_total", "mem_used", "mem_free",
    "mem_reserved", "temp_gpu", "temp_mem", "power_w", "power_limit_w", "energy_mj",
    "sm_clock", "mem_clock", "pstate", "fan", "throttle", "ecc_corrected", "ecc_uncorrected",
    "remapped_correctable", "remapped_uncorrectable", "remap_pending", "remap_failure",
    "pcie_tx_bps", "pcie_rx_bps", "pcie_replay",
]  # fmt: skip


def test_a_supported_gpu_reads_every_field_and_its_energy_counter_grows(fake_gpus):
    nv = fake_gpus([{"name": "H100 (fake)", "pci_bus_id": "00000000:1B:00.0"}])
    sampler = GpuSampler(nv, slow_every=0, pcie_every=0)
    [first] = sampler.sample()
    time.sleep(0.05)
    [second] = sampler.sample()
    assert first["ok"] and first["error"] is None and first["unsupported"] == []
    missing = [name for name in FIELDS if first[name] is None]
    assert missing == []
    assert first["name"] == "H100 (fake)" and first["pci_bus_id"] == "00000000:1B:00.0"
    assert first["mem_used"] + first["mem_free"] + first["mem_reserved"] == first["mem_total"]
    assert 0 <= first["util_gpu"] <= 100 and first["power_limit_w"] == 700.0
    assert isinstance(first["throttle"], list) and first["mig"] is None
    assert second["energy_mj"] > first["energy_mj"]


def test_unsupported_fields_read_as_na_and_are_not_asked_again(fake_gpus):
    nv = fake_gpus([{}, {"unsupported": ["fan", "memory_temp", "ecc", "remapped", "energy"]}])
    sampler = GpuSampler(nv, slow_every=0)
    full, partial = sampler.sample()
    assert full["fan"] is not None and full["temp_mem"] is not None
    assert partial["ok"] is True  # unsupported is not a failure
    assert partial["fan"] is None and partial["temp_mem"] is None and partial["energy_mj"] is None
    assert partial["ecc_corrected"] is None and partial["remapped_uncorrectable"] is None
    assert {"fan", "temp_mem", "ecc", "remapped", "energy"} <= set(partial["unsupported"])
    assert partial["util_gpu"] is not None and partial["power_w"] is not None
    [_, again] = sampler.sample()
    assert again["fan"] is None and again["unsupported"] == partial["unsupported"]


def test_a_gpu_that_fails_mid_run_is_reported_and_the_others_go_on(fake_gpus):
    nv = fake_gpus([{}, {}])
    sampler = GpuSampler(nv)
    before = sampler.sample()
    import pynvml

    pynvml.fake_break(1)
    during = sampler.sample()
    pynvml.fake_fix(1)
    after = sampler.sample()
    assert [g["ok"] for g in before] == [True, True]
    assert [g["ok"] for g in during] == [True, False]
    assert during[1]["error"] == "GPU is lost" and during[1]["util_gpu"] is None
    assert during[1]["uuid"] == before[1]["uuid"]  # still named, so the UI can say which
    assert during[0]["util_gpu"] is not None
    assert [g["ok"] for g in after] == [True, True]


def test_a_gpu_that_fails_after_a_while_by_configuration(fake_gpus):
    nv = fake_gpus([{}, {"fail_after": 0.2}])
    sampler = GpuSampler(nv)
    assert [g["ok"] for g in sampler.sample()] == [True, True]
    time.sleep(0.25)
    assert [g["ok"] for g in sampler.sample()] == [True, False]


def test_mig_devices_are_listed_with_their_memory(fake_gpus):
    nv = fake_gpus([{"mig": 2}, {}])
    mig_gpu, plain = GpuSampler(nv).sample()
    assert plain["mig"] is None
    assert [m["index"] for m in mig_gpu["mig"]] == [0, 1]
    assert all(m["uuid"].startswith("MIG-") for m in mig_gpu["mig"])
    assert [m["gpu_instance"] for m in mig_gpu["mig"]] == [1, 2]
    assert all(0 < m["mem_used"] <= m["mem_total"] for m in mig_gpu["mig"])
    assert mig_gpu["util_gpu"] is not None  # the parent still reads


def test_xid_events_are_caught_by_their_own_thread(fake_gpus):
    nv = fake_gpus([{}, {"xids": [[0.1, 79]]}])
    watcher = XidWatcher(nv, wait_ms=50)
    watcher.start()
    try:
        sampler = GpuSampler(nv, xids=watcher)
        deadline = time.monotonic() + 5
        while sampler.sample()[1]["xid"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        import pynvml

        pynvml.fake_inject_xid(0, 31)
        while sampler.sample()[0]["xid"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first, second = sampler.sample()
    finally:
        watcher.stop()
        watcher.join(5)
    assert (second["xid"], second["xid_count"]) == (79, 1)
    assert (first["xid"], first["xid_count"]) == (31, 1)
    assert not watcher.is_alive()


def test_processes_on_a_gpu_are_listed_with_their_memory(fake_gpus):
    nv = fake_gpus([{"processes": [{"pid": 4242, "memory": 1024**3}]}])
    [gpu] = GpuSampler(nv).sample()
    assert {"pid": 4242, "mem": 1024**3} in [
        {"pid": p["pid"], "mem": p["mem"]} for p in gpu["processes"]
    ]


def test_without_the_library_there_are_no_gpus_and_one_plain_reason(fake_gpus):
    nv = fake_gpus(None)
    assert nv.available is False
    assert nv.status == "no NVIDIA GPU: NVML Shared Library Not Found"
    assert GpuSampler(nv).sample() == []


def test_the_host_sampler_reads_cpu_memory_and_rates():
    sampler = HostSampler()
    busy = time.monotonic() + 0.2
    while time.monotonic() < busy:
        pass
    reading = sampler.sample()
    assert 0 <= reading["cpu"] <= 100 and len(reading["cpu_per_core"]) == reading["cpu_count"]
    assert len(reading["load"]) == 3
    assert 0 < reading["mem_used"] <= reading["mem_total"]
    assert reading["net_rx_bps"] is not None and reading["net_rx_bps"] >= 0
    import os

    usage = sampler.processes([os.getpid()])
    assert usage["alive"] == 1 and usage["rss"] > 0
