"""The node image's contract: what a node pod (or `docker run`) must give crashcart so it
works from inside a container, as it does on the host.

The node image is crashcart plus the default toolbox as a container image
(`crashcart image node`, crashcart/image/nodebuild.py). A node pod runs it privileged in
the host's pid namespace with the host paths below; `kubectl crashcart` writes that pod spec
(crashcart/kube/) and the tests translate the same list into `docker run` / `ctr run`.
"""

from __future__ import annotations

from crashcart import __version__

# The image reference `kubectl crashcart` uses unless --node-image says otherwise: load the
# built tar into the nodes' runtime, or push it to a registry and pass --node-image.
NODE_IMAGE_REPO = "localhost/crashcart-node"
# Where the default toolbox sits inside the node image (crashcart.defaults.DEFAULT_IMAGE).
NODE_TOOLBOX = "/var/lib/crashcart/crashcart.img"

# (host path, path in the node container, read-only): the runtimes' state and sockets (to
# find containers), their storage (post-mortem reads exited containers' layers), the cgroup
# filesystem (a session joins the target's cgroups), the host's /dev (loop devices appear
# after the container started), crashcart's own state and the pod logs.
HOST_PATHS: tuple[tuple[str, str, bool], ...] = (
    ("/run", "/run", False),
    ("/var/lib/docker", "/var/lib/docker", True),
    ("/var/lib/containerd", "/var/lib/containerd", True),
    ("/var/lib/containers", "/var/lib/containers", True),
    ("/var/log/pods", "/var/log/pods", True),
    ("/sys/fs/cgroup", "/sys/fs/cgroup", False),
    ("/dev", "/dev", False),
)


def default_node_image() -> str:
    return f"{NODE_IMAGE_REPO}:{__version__}"
