"""Shop-floor I/O: PLC triggers in and verdicts out, over Modbus TCP or OPC UA.

The configuration (`plc.config`) is plain data; the protocol libraries (`pip install
'edge-inspector[plc]'`: pymodbus, asyncua) are imported only when a station has a PLC.
"""
