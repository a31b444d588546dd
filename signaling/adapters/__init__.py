"""The I/O behind the core's interfaces: SQLite files and asyncio queues.

The core (the rest of ``signaling``) owns each interface and does no I/O itself:
``memory_bus`` is an ``EventBus`` (``signaling/bus.py``), ``sqlite_records`` a
``RecordStore`` (``signaling/records.py``), ``sqlite_catalogue`` stores the
catalogue's models (``signaling/catalogue.py``); ``private_files`` creates the
data directory's files for them and for the server.
"""
