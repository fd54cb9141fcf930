"""How a station talks to its PLC: where the trigger, the part and lot ids and the verdict's
registers or nodes are. Pure configuration (no protocol library imported here).

One handshake for both protocols: the PLC raises the trigger (a rising edge: a coil or boolean
node going true, a register going from 0 to non-zero); the engine reads the part and lot id,
inspects one fresh frame, and writes the verdict's values, the sequence counter last, so a PLC
that sees the counter change reads a complete verdict.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "OUTPUTS",
    "ModbusOutputs",
    "ModbusPlcConfig",
    "ModbusPoint",
    "ModbusText",
    "OpcuaOutputs",
    "OpcuaPlcConfig",
    "PlcConfig",
    "ResultCode",
    "StateCode",
]

# What the engine writes, in this order (the sequence counter last).
OUTPUTS = ("result", "defect_code", "confidence", "state", "heartbeat", "sequence")

type Address = Annotated[int, Field(ge=0, le=65535)]
type NodeId = Annotated[str, Field(min_length=3, max_length=200, pattern=r"^(ns=\d+;)?[isgb]=.+")]


class ResultCode:
    """The `result` value: what the PLC sorts by."""

    OK = 1
    NG = 2  # a defect (the `defect_code` says which class)


class StateCode:
    """The `state` value: the station as the PLC should see it."""

    RUNNING = 1
    DISABLED = 2
    UNAVAILABLE = 3  # the camera or the model failed
    STOPPED = 0  # written when the engine stops


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModbusPoint(_Model):
    """A coil (one bit) or a holding register (16 bits), by its 0-based address."""

    coil: Address | None = None
    # `register` in the file; another name here (pydantic's models have a `register` already)
    holding: Address | None = Field(default=None, alias="register")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.coil is None) == (self.holding is None):
            raise ValueError("give either coil or register")
        return self

    def describe(self) -> str:
        return f"coil {self.coil}" if self.coil is not None else f"holding register {self.holding}"

    def cells(self) -> set[tuple[str, int]]:
        if self.coil is not None:
            return {("coil", self.coil)}
        assert self.holding is not None
        return {("register", self.holding)}


class ModbusText(_Model):
    """A text in consecutive holding registers, two characters a register (high byte first),
    padded with NULs: a part or lot id."""

    start: Address = Field(alias="register")  # the first register
    length: Annotated[int, Field(ge=1, le=64, description="Registers (2 characters each).")] = 8

    def describe(self) -> str:
        return (
            f"holding registers {self.start}-{self.start + self.length - 1} "
            f"(text, {2 * self.length} characters)"
        )

    def cells(self) -> set[tuple[str, int]]:
        return {("register", self.start + n) for n in range(self.length)}


class ModbusOutputs(_Model):
    """Where the verdict goes. Registers: result (1 OK, 2 NG), defect_code (0 none), confidence
    (per mille), state (`StateCode`), heartbeat (counts up), sequence (counts up, wraps at
    65536, written last). A coil as `result` is set when the part is NG; as `heartbeat` it
    toggles."""

    result: ModbusPoint | None = None
    defect_code: ModbusPoint | None = None
    confidence: ModbusPoint | None = None
    state: ModbusPoint | None = None
    heartbeat: ModbusPoint | None = None
    sequence: ModbusPoint | None = None


class OpcuaOutputs(_Model):
    """Where the verdict goes, as node ids (`ns=2;s=Line1.Result`); values as for Modbus,
    written with each node's own data type (a Boolean `result` is true when NG)."""

    result: NodeId | None = None
    defect_code: NodeId | None = None
    confidence: NodeId | None = None
    state: NodeId | None = None
    heartbeat: NodeId | None = None
    sequence: NodeId | None = None


class _PlcCommon(_Model):
    heartbeat_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    codes: dict[str, Annotated[int, Field(ge=1, le=32767)]] | None = Field(
        default=None,
        description="defect_code for each defect class (default: the station's classes in "
        "order, from 1).",
    )
    queue: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=16,
        description="Trigger edges waiting while the station inspects; one more is refused "
        "(counted and logged), never inspected twice.",
    )
    reconnect_max_s: Annotated[float, Field(ge=0.5, le=300)] = 10.0


class ModbusPlcConfig(_PlcCommon):
    """A PLC (or a remote I/O) on Modbus TCP."""

    type: Literal["modbus"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    device_id: Annotated[int, Field(ge=0, le=255)] = 1
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 0.5
    poll_ms: Annotated[float, Field(ge=1, le=1000)] = Field(
        default=5.0, description="How often the trigger is read (Modbus has no notifications)."
    )
    trigger: ModbusPoint | None = None
    part_id: ModbusText | None = None
    lot_id: ModbusText | None = None
    outputs: ModbusOutputs = ModbusOutputs()

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        seen: dict[tuple[str, int], str] = {}
        named: list[tuple[str, ModbusPoint | ModbusText | None]] = [
            ("trigger", self.trigger),
            ("part_id", self.part_id),
            ("lot_id", self.lot_id),
            *((f"outputs.{n}", getattr(self.outputs, n)) for n in OUTPUTS),
        ]
        for name, point in named:
            for cell in point.cells() if point is not None else ():
                if cell in seen:
                    raise ValueError(f"{name} and {seen[cell]} both use {cell[0]} {cell[1]}")
                seen[cell] = name
        return self

    def points(self) -> list[tuple[str, str, str]]:
        """(name, where, direction) for each configured point: the map `check` prints."""
        rows = []
        for name, point, way in (
            ("trigger", self.trigger, "PLC -> engine"),
            ("part_id", self.part_id, "PLC -> engine"),
            ("lot_id", self.lot_id, "PLC -> engine"),
        ):
            if point is not None:
                rows.append((name, point.describe(), way))
        for name in OUTPUTS:
            out: ModbusPoint | None = getattr(self.outputs, name)
            if out is not None:
                rows.append((name, out.describe(), "engine -> PLC"))
        return rows

    def describe(self) -> str:
        return f"Modbus TCP {self.host}:{self.port} device {self.device_id}"


class OpcuaPlcConfig(_PlcCommon):
    """A PLC with an OPC UA server."""

    type: Literal["opcua"]
    url: Annotated[str, Field(pattern=r"^opc\.tcp://")]
    namespace: str | None = Field(
        default=None,
        description="A namespace URI: node ids without `ns=` are looked up in it.",
    )
    publishing_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=10.0,
        description="The trigger subscription's publishing interval; 0: as fast as the server "
        "allows (it revises the interval to its own minimum).",
    )
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 4.0
    trigger: NodeId | None = None
    part_id: NodeId | None = None
    lot_id: NodeId | None = None
    outputs: OpcuaOutputs = OpcuaOutputs()

    def points(self) -> list[tuple[str, str, str]]:
        rows = [
            (name, node, "PLC -> engine")
            for name, node in (
                ("trigger", self.trigger),
                ("part_id", self.part_id),
                ("lot_id", self.lot_id),
            )
            if node is not None
        ]
        rows += [
            (name, node, "engine -> PLC")
            for name in OUTPUTS
            if (node := getattr(self.outputs, name)) is not None
        ]
        return rows

    def describe(self) -> str:
        return f"OPC UA {self.url}"


type PlcConfig = Annotated[ModbusPlcConfig | OpcuaPlcConfig, Field(discriminator="type")]
