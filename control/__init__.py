"""The control socket: a local JSON-lines API through which CLIs talk to a running runtime.

``protocol`` holds the wire format and request validation (pure), ``server`` the Unix-socket
transport that hands validated commands to a handler, ``client`` the blocking client. The
runtime behind the handler is wired elsewhere.
"""

# The socket's name in a state directory, where a runtime listens unless told otherwise.
SOCKET_FILE = "orchestrate.sock"
