"""What a provider's author (and Fleet itself) tests with: the provider contract suite, kits, the
real backends some providers need (moto's server, podman's Docker API, a fake Compute server),
a control plane of real processes, and `fleet bench`.

Run the contract suite against your provider in your own tests::

    import pytest
    from fleet.testing import Kit, ProviderContract, clusters

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def kit(self, tmp_path):
            mine, other = clusters(MyProvider.validate_options({...}))
            kit = Kit(MyProvider(ProviderContext(mine.fleet_id, tmp_path)), mine, other,
                      ContainerSpec(command=("worker",)), {"bad": "options"}, "bad")
            yield kit
            cleanup(kit)

This package needs the test extra (`pip install 'fleet[test]'`); its backends import their SDKs
only when used.
"""

from fleet.testing.contract import ProviderContract, wait_for
from fleet.testing.kits import Kit, cleanup, clusters, fleet_ids

__all__ = ["Kit", "ProviderContract", "cleanup", "clusters", "fleet_ids", "wait_for"]
