"""VLM actions that write to a PLC (`target: {type: modbus|opcua, ...}`): one connection a
call, one write of the value the configuration fixes, under the same guard rails as the other
targets (allow-list, rate limit, confirmation)."""

from __future__ import annotations

import contextlib
from typing import Any

from ..config import ActionConfig, ModbusActionTarget, OpcuaActionTarget
from ..tools.actions import ActionContext, ActionError

__all__ = ["PlcActionPort"]


class PlcActionPort:
    """Carries out `modbus` and `opcua` action targets."""

    async def execute(
        self, action: ActionConfig, arguments: dict[str, Any], context: ActionContext
    ) -> str:
        target = action.target
        try:
            if isinstance(target, ModbusActionTarget):
                return await _modbus(target)
            if isinstance(target, OpcuaActionTarget):
                return await _opcua(target)
        except ImportError as exc:
            raise ActionError(
                f"PLC actions need {exc.name}: pip install 'edge-inspector[plc]'"
            ) from None
        raise ActionError(f"not a PLC target: {target.type}")


async def _modbus(target: ModbusActionTarget) -> str:
    from pymodbus import ModbusException
    from pymodbus.client import AsyncModbusTcpClient

    where = f"Modbus TCP {target.host}:{target.port}"
    client = AsyncModbusTcpClient(
        target.host, port=target.port, timeout=target.timeout_s, retries=0, reconnect_delay=0
    )
    try:
        if not await client.connect():
            raise ActionError(f"{where}: cannot connect")
        if target.coil is not None:
            what = f"coil {target.coil}"
            response = await client.write_coil(
                target.coil, bool(target.value), device_id=target.device_id
            )
        else:
            assert target.holding is not None
            what = f"holding register {target.holding}"
            response = await client.write_register(
                target.holding, int(target.value), device_id=target.device_id
            )
        if response.isError():
            raise ActionError(f"{where}: {what}: the PLC refused the write ({response})")
    except ModbusException as exc:
        raise ActionError(f"{where}: {exc}") from None
    finally:
        client.close()
    return f"wrote {target.value!r} to {what} of {where}"


async def _opcua(target: OpcuaActionTarget) -> str:
    from asyncua import ua
    from asyncua.client.client import Client
    from asyncua.ua.uaerrors import UaError

    client = Client(target.url, timeout=target.timeout_s)
    try:
        await client.connect()
    except (OSError, TimeoutError, UaError) as exc:
        raise ActionError(f"OPC UA {target.url}: cannot connect: {exc}") from None
    try:
        node_id = target.node
        if target.namespace is not None and not node_id.startswith("ns="):
            node_id = f"ns={await client.get_namespace_index(target.namespace)};{node_id}"
        node = client.get_node(node_id)
        kind = await node.read_data_type_as_variant_type()
        value: bool | int | float = target.value
        if kind == ua.VariantType.Boolean:
            value = bool(value)
        elif kind in (ua.VariantType.Float, ua.VariantType.Double):
            value = float(value)
        else:
            value = int(value)
        await node.write_value(ua.Variant(value, kind))
    except (UaError, ValueError, ConnectionError, TimeoutError, OverflowError) as exc:
        raise ActionError(f"OPC UA {target.url}: {target.node}: {exc}") from None
    finally:
        with contextlib.suppress(OSError, ConnectionError, UaError):
            await client.disconnect()
    return f"wrote {value!r} to {target.node} of OPC UA {target.url}"
