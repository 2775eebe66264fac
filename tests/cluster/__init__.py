"""A real Kubernetes control plane without containers, for the end-to-end tests.

etcd, kube-apiserver (RBAC, service-account tokens) and kube-controller-manager run as local
processes from binaries that ``scripts/build-control-plane.sh`` builds and caches; kwok simulates a
node and pod phases. Nothing runs in a container: the ``FakeKubelet`` binds pods to the kwok node
and, for commit pods, runs the container's command as a local process with the pod's
environment, then reports its exit code in the pod's status, as a kubelet would.
"""
