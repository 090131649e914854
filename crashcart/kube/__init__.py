"""`kubectl crashcart`: debug a pod's container from anywhere kubectl reaches, through a
short-lived node pod that runs crashcart on the pod's node.

- pod.py: what the pod object says (node, the container's runtime ID, its state) and the
  errors an operator can act on; pure.
- spec.py: the node pod's spec (privileged, host pid, the host paths of
  crashcart.nodeimage.HOST_PATHS, pinned to the node, expiring); pure.
- kubectl.py: the kubectl runs (get, create, wait, exec, delete, events), every one bounded.
- cli.py: the plugin's command line and the flow that deletes the node pod on every exit.

Nothing here talks to the API server itself: kubectl does, with the operator's own
credentials, context and kubeconfig.
"""
