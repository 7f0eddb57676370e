"""Which rows each process builds (parallel/feeding.py), the replicated-activations check and the DCN mesh.

The multi-process halves (a sequence group spanning two processes, trained end to end) are in
tests/test_multiprocess.py; here the row arithmetic runs on stand-in devices that name their process.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dreamactor_jax import config_lib
from dreamactor_jax.curriculum import presets
from dreamactor_jax.models.build import model_config
from dreamactor_jax.parallel import feeding, mesh
from dreamactor_jax.parallel import rules as rules_lib
from dreamactor_jax.train import loop


@dataclasses.dataclass(frozen=True)
class _Device:
    id: int
    process_index: int


class _Sharding:
    """Stand-in for a NamedSharding: rows held per device, as ``devices_indices_map`` gives them."""

    def __init__(self, held: dict[_Device, slice]):
        self.held, self.spec = held, (("data", "fsdp"),)

    def devices_indices_map(self, shape):
        return {d: (sl,) + (slice(None),) * (len(shape) - 1) for d, sl in self.held.items()}


def _devices(processes: int, per: int) -> list[_Device]:
    return [_Device(p * per + i, p) for p in range(processes) for i in range(per)]


def test_distinct_rows_per_process_are_consecutive_blocks():
    # data=8 over 2 processes x 4 devices: one row per device, process p holds rows 4p..4p+3
    devs = _devices(2, 4)
    s = _Sharding({d: slice(d.id, d.id + 1) for d in devs})
    assert feeding.process_rows(s, 8) == {0: (0, 4), 1: (4, 8)}
    assert feeding.row_block(s, 8, 0) == feeding.RowBlock(0, 2, 4)
    assert feeding.row_block(s, 8, 1) == feeding.RowBlock(1, 2, 4)


def test_rows_shared_where_a_group_spans_processes():
    # batch 1 replicated on all 8 devices (sequence/tensor groups spanning both processes): both build row 0
    devs = _devices(2, 4)
    s = _Sharding({d: slice(None) for d in devs})
    assert feeding.row_block(s, 1, 0) == feeding.row_block(s, 1, 1) == feeding.RowBlock(0, 1, 1)
    # data=2 across 4 processes: processes 0, 1 share rows [0, 2), processes 2, 3 rows [2, 4)
    devs = _devices(4, 2)
    s = _Sharding({d: slice(0, 2) if d.process_index < 2 else slice(2, 4) for d in devs})
    assert [feeding.row_block(s, 4, p).index for p in range(4)] == [0, 0, 1, 1]
    assert feeding.row_block(s, 4, 3) == feeding.RowBlock(1, 2, 2)


def test_uneven_or_interleaved_rows_are_refused():
    devs = _devices(2, 2)
    uneven = _Sharding({devs[0]: slice(0, 1), devs[1]: slice(0, 1), devs[2]: slice(1, 3), devs[3]: slice(3, 4)})
    with pytest.raises(ValueError, match="not equal blocks covering the batch"):
        feeding.row_block(uneven, 4, 0)
    interleaved = _Sharding({devs[0]: slice(0, 1), devs[1]: slice(2, 3), devs[2]: slice(1, 2), devs[3]: slice(3, 4)})
    with pytest.raises(ValueError, match="not one interval"):
        feeding.row_block(interleaved, 4, 0)


def test_global_batch_on_one_process_is_the_host_batch():
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    m = mesh.make_mesh(dict(data=2, fsdp=2, sequence=2))
    sharding = NamedSharding(m, P(("data", "fsdp")))
    block = feeding.row_block(sharding, 4)
    assert block == feeding.RowBlock(0, 1, 4)
    x = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    arr = feeding.global_batch({"x": x}, {"x": sharding}, block)["x"]
    assert arr.sharding == sharding and np.array_equal(np.asarray(arr), x)
    with pytest.raises(ValueError, match="'x' has 2 rows"):
        feeding.global_batch({"x": x[:2]}, {"x": sharding}, block)
    assert jax.process_count() == 1


# --- replicated activations -------------------------------------------------------------------------------------


def test_indivisible_batch_is_an_error_naming_batch_mesh_and_fix():
    sizes = {"data": 1, "fsdp": 64, "tensor": 1, "sequence": 1}
    with pytest.raises(rules_lib.ReplicatedActivationsError) as e:
        rules_lib.check_activations(8, 1024, sizes, rules_lib.DEFAULT_RULES)
    msg = str(e.value)
    assert "replicated 64x" in msg and "config.data.batch_size=8" in msg and "data x fsdp" not in msg
    assert "fsdp = 64" in msg and "use a batch of 64" in msg and "allow_replicated_activations" in msg
    assert rules_lib.check_activations(8, 1024, sizes, rules_lib.DEFAULT_RULES, allow=True) == 64
    assert rules_lib.check_activations(64, 1024, sizes, rules_lib.DEFAULT_RULES) == 1
    # data x fsdp = 32 with a batch of 8: data divides, fsdp's 8 devices would repeat the stream
    with pytest.raises(rules_lib.ReplicatedActivationsError, match=r"replicated 8x: mesh axes \{'fsdp': 8\}"):
        rules_lib.check_activations(8, 1024, {"data": 4, "fsdp": 8}, rules_lib.DEFAULT_RULES)
    # tokens that do not divide over sequence; tensor keeps the residual stream whole by design (exempt)
    with pytest.raises(rules_lib.ReplicatedActivationsError, match="1022 tokens per example do not divide"):
        rules_lib.check_activations(1, 1022, {"sequence": 4}, rules_lib.DEFAULT_RULES)
    assert rules_lib.check_activations(1, 1024, {"tensor": 8, "sequence": 4}, rules_lib.DEFAULT_RULES) == 1


def test_prepare_refuses_an_indivisible_batch():
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.mesh.update(data=1, fsdp=8)
    c.data.batch_size = 4
    with pytest.raises(rules_lib.ReplicatedActivationsError, match="batch_size=4 is not a multiple of fsdp = 8"):
        loop.prepare(c)


@pytest.mark.parametrize("cluster,resolution", sorted(presets.DOCUMENTED_SLICES))
def test_wan14b_presets_fill_their_documented_slice(cluster, resolution):
    c = presets.curriculum_config("wan14b", "full", cluster, resolution)
    name, devices = presets.DOCUMENTED_SLICES[cluster, resolution]
    sizes = dict(zip(mesh.AXES, mesh.resolve_axis_sizes(c.mesh, devices)))
    for stage in ("stage1", "stage2"):
        sc = config_lib.stage_config(c, stage)
        assert loop.check_activations(sc, model_config(sc.model), sizes, rules_lib.DEFAULT_RULES) == 1, (name, stage)
    # twice the slice with the same batch: the new check names it (the old rules replicated silently)
    big = dict(zip(mesh.AXES, mesh.resolve_axis_sizes(c.mesh, 2 * devices)))
    sc = config_lib.stage_config(c, "stage1")
    with pytest.raises(rules_lib.ReplicatedActivationsError):
        loop.check_activations(sc, model_config(sc.model), big, rules_lib.DEFAULT_RULES)


# --- DCN mesh ----------------------------------------------------------------------------------------------------


def test_dcn_sizes_must_divide_and_match_the_granules():
    with pytest.raises(ValueError, match="dcn_sequence=3 must be a positive divisor"):
        mesh.make_mesh(dict(sequence=4, dcn_sequence=3))
    # one process on 8 CPU devices is one granule: a DCN factor of 2 cannot be placed
    with pytest.raises(ValueError, match="form 1 granule"):
        mesh.make_mesh(dict(data=2, fsdp=4, dcn_data=2))
    assert mesh.granule_attr([_Device(0, 0), _Device(1, 1)]) == "process_index"
