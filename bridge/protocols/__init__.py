"""Pure protocol codecs: bytes in, value types out, and back. No I/O anywhere in here.

One module per specification. Every message is a small immutable value class with
``from_bytes`` and ``__bytes__``; decoders raise only :class:`bridge.errors.ProtocolError`
subclasses, whatever the input.
"""
