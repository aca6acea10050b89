"""The edge agent that runs beside the patient's devices (a Raspberry Pi at home).

It reads each configured device through its driver (:mod:`bridge.devices`), corrects the
device clock (:mod:`bridge.edge.clock`), stores records and sync state together in a durable
SQLite outbox (:mod:`bridge.edge.outbox`) and publishes them over MQTT at QoS 1, deleting
them only once the broker acknowledged them (:mod:`bridge.edge.uplink`).
:mod:`bridge.edge.agent` ties the loops together; :mod:`bridge.edge.config` reads the TOML
configuration; :mod:`bridge.edge.cli` is the command line.
"""
