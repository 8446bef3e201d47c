"""The rollout simulation's gRPC group at a tiny scale: real gRPC channels (grpcio) calling
through a simulated Service, pods with a real gRPC app and the real proxy in front.

What is asserted is each mechanism: drain-proxy's GOAWAY sequence moves every channel
without a failed call and lets a stream on pod A finish; a naive app fails that stream;
and after a scale-up only rotation brings the new pod any call.
"""

from __future__ import annotations

import os

import pytest

from proxy.rollout.report import ScenarioResult

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
grpc_rollout = pytest.importorskip("proxy.rollout.grpc_rollout",
                                   reason="grpcio is missing (the test extra has it)")

from conftest import Run  # noqa: E402

TINY = grpc_rollout.GrpcConfig(propagation_delay_s=0.3, window_s=0.6, drain_timeout_s=1.0,
                               before_s=0.3, channels=4, stream_s=0.3,
                               max_requests_per_connection=20, scale_up_observe_s=1.0)


def _timeline(result: ScenarioResult) -> str:
    return "\n".join(event.text for event in result.events)


def test_drain_proxy_moves_every_channel_without_a_failed_call(run: Run[ScenarioResult]) -> None:
    result = run(grpc_rollout.run_scale_down(grpc_rollout.GrpcSetup.DRAIN_PROXY, TINY))
    assert result.failed == 0, dict(result.failures)
    assert result.requests > 50
    assert "the streaming call ended, answered in full by pod A" in _timeline(result)
    assert "drained: 0 calls cut" in _timeline(result)
    assert result.rotations is not None and result.rotations >= 1, "channels rotated while serving"


def test_a_naive_app_fails_the_stream_it_was_serving(run: Run[ScenarioResult]) -> None:
    result = run(grpc_rollout.run_scale_down(grpc_rollout.GrpcSetup.NAIVE, TINY))
    assert result.failed >= 1
    assert "the streaming call failed" in _timeline(result)


def test_after_a_scale_up_only_rotation_brings_the_new_pod_calls(run: Run[object]) -> None:
    without = run(grpc_rollout.run_scale_up(0, TINY))
    assert isinstance(without, grpc_rollout.ScaleUpResult)
    assert without.calls_after_join > 50 and without.on_new_pod == 0
    rotating = run(grpc_rollout.run_scale_up(20, TINY))
    assert isinstance(rotating, grpc_rollout.ScaleUpResult)
    assert rotating.share > 0.2, rotating
    assert rotating.first_call_s is not None and rotating.first_call_s < 1.0
