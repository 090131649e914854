"""Post-mortem: a container that exists but has no running process (exited, crashed,
stopped, created and never started). Its filesystem and what its runtime knows about its
death come from the runtime's own records (one module per runtime); the session has
namespaces of its own (crashcart.attach.ownns). Replay runs the container's own entrypoint
in a throwaway copy of it, optionally under a tool from the toolbox.
"""
