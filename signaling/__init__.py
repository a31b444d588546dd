"""Signalling: the wire protocol and the lesson logic, free of sockets and media."""
