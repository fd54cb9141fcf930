"""Set-up in the UI: the hub (VLM and storage), then each station as a subentry."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from homeassistant.config_entries import (
    ConfigEntry,
    ConfigFlow,
    ConfigFlowResult,
    ConfigSubentryFlow,
    OptionsFlow,
    SubentryFlowResult,
)
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.selector import (
    EntitySelector,
    EntitySelectorConfig,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectSelector,
    SelectSelectorConfig,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)

from .const import (
    CONF_ACTIONS,
    CONF_CAMERA,
    CONF_CAMERAS,
    CONF_DEFECTS,
    CONF_ENGINE_TOKEN,
    CONF_ENGINE_URL,
    CONF_IMGSZ,
    CONF_INTERVAL,
    CONF_LINE,
    CONF_MODEL_PATH,
    CONF_MQTT_BASE_TOPIC,
    CONF_MQTT_PUBLISH,
    CONF_NOTIFY,
    CONF_OLLAMA_MODEL,
    CONF_OLLAMA_URL,
    CONF_PRODUCT,
    CONF_SHIFTS,
    CONF_STORAGE,
    CONF_THRESHOLD,
    DEFAULT_IMGSZ,
    DEFAULT_INTERVAL,
    DEFAULT_OLLAMA_MODEL,
    DEFAULT_SHIFTS,
    DEFAULT_THRESHOLD,
    DOMAIN,
    SUBENTRY_STATION,
)
from .entry_config import model_path, parse_cameras
from .validation import vol

_LOGGER = logging.getLogger(__name__)
_CLASS = re.compile(r"^[A-Za-z0-9_\- ]{1,64}$")

HUB_SCHEMA = vol.Schema(
    {
        vol.Optional(CONF_OLLAMA_URL): TextSelector(TextSelectorConfig(type=TextSelectorType.URL)),
        vol.Optional(CONF_OLLAMA_MODEL, default=DEFAULT_OLLAMA_MODEL): str,
        vol.Optional(CONF_STORAGE): str,
        vol.Optional(CONF_ENGINE_URL): TextSelector(TextSelectorConfig(type=TextSelectorType.URL)),
        vol.Optional(CONF_ENGINE_TOKEN): TextSelector(
            TextSelectorConfig(type=TextSelectorType.PASSWORD)
        ),
    }
)


def engine_installed() -> bool:
    """Whether this Home Assistant can run the engine in-process (PyTorch and Ultralytics)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ultralytics") is not None
    except (ImportError, ValueError):
        return False


async def check_engine(hass: HomeAssistant, url: str, token: str | None) -> str | None:
    """None when an engine service answers at `url` and takes the token, else the error key."""
    from edge_inspector.api.client import EngineClient
    from edge_inspector.errors import EdgeInspectorError, EngineAuthError, EngineUnreachableError

    client = EngineClient(url, token, async_get_clientsession(hass), timeout=10)
    try:
        await client.stations()  # needs the token, unlike the health check
    except EngineAuthError:
        return "invalid_auth"
    except EngineUnreachableError:
        return "engine_unreachable"
    except (EdgeInspectorError, ValueError, KeyError):
        return "not_an_engine"
    return None


async def check_ollama(url: str, model: str) -> str | None:
    """None when the server answers and has the model, else the error key."""
    import httpx
    import ollama
    from homeassistant.util.ssl import get_default_context

    # Home Assistant's shared SSL context: building one loads certificates (blocking I/O)
    client = ollama.AsyncClient(host=url, timeout=10, verify=get_default_context())
    try:
        async with asyncio.timeout(10):
            listing = await client.list()
    except (TimeoutError, httpx.HTTPError, ConnectionError, ollama.ResponseError):
        return "cannot_connect"
    finally:
        await client._client.aclose()
    names = {m.model for m in listing.models}
    if not names & {model, f"{model}:latest"}:
        return "model_missing"
    return None


class EdgeInspectorConfigFlow(ConfigFlow, domain=DOMAIN):
    """The hub: one per Home Assistant."""

    VERSION = 1

    async def _hub_step(
        self, step_id: str, user_input: dict[str, Any] | None, defaults: dict[str, Any]
    ) -> dict[str, str] | ConfigFlowResult:
        errors: dict[str, str] = {}
        if user_input is not None:
            url = (user_input.get(CONF_OLLAMA_URL) or "").strip()
            model = (user_input.get(CONF_OLLAMA_MODEL) or DEFAULT_OLLAMA_MODEL).strip()
            engine = (user_input.get(CONF_ENGINE_URL) or "").strip().rstrip("/")
            token = (user_input.get(CONF_ENGINE_TOKEN) or "").strip()
            if engine:  # the engine runs as a service: its own Ollama and storage apply
                if (problem := await check_engine(self.hass, engine, token or None)) is not None:
                    errors[CONF_ENGINE_URL] = problem
                else:
                    return {
                        CONF_OLLAMA_URL: "",
                        CONF_OLLAMA_MODEL: model,
                        CONF_STORAGE: "",
                        CONF_ENGINE_URL: engine,
                        CONF_ENGINE_TOKEN: token,
                    }
            elif not await self.hass.async_add_executor_job(engine_installed):
                errors["base"] = "engine_not_installed"
            elif url and (problem := await check_ollama(url, model)) is not None:
                errors["base"] = problem
            else:
                return {
                    CONF_OLLAMA_URL: url,
                    CONF_OLLAMA_MODEL: model,
                    CONF_STORAGE: (user_input.get(CONF_STORAGE) or "").strip(),
                }
        return self.async_show_form(
            step_id=step_id,
            data_schema=self.add_suggested_values_to_schema(HUB_SCHEMA, user_input or defaults),
            errors=errors,
        )

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        await self.async_set_unique_id(DOMAIN)
        self._abort_if_unique_id_configured()
        result = await self._hub_step("user", user_input, {})
        if isinstance(result, dict) and CONF_OLLAMA_MODEL in result:
            return self.async_create_entry(title="Edge Inspector", data=result)
        return result  # type: ignore[return-value]

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        entry = self._get_reconfigure_entry()
        result = await self._hub_step("reconfigure", user_input, dict(entry.data))
        if isinstance(result, dict) and CONF_OLLAMA_MODEL in result:
            # A loaded entry's update listener reloads it when the data changes (Home Assistant
            # 2026.12 no longer lets a flow schedule a reload beside a listener). An entry that
            # failed to set up has no listener, and an unchanged reconfigure should reconnect
            # too, as a user who pressed submit expects: those are reloaded here.
            data = cast("dict[str, Any]", result)  # the form's data, not a flow result
            return self._update_and_reload(entry, data, "reconfigure_successful")
        return result  # type: ignore[return-value]

    def _update_and_reload(
        self, entry: ConfigEntry, data: dict[str, Any], reason: str
    ) -> ConfigFlowResult:
        """Save the entry's new data, and have it set up again with it: a loaded entry's update
        listener reloads it when the data changes (Home Assistant 2026.12 no longer lets a flow
        schedule a reload beside a listener); an entry that failed to set up has no listener,
        and unchanged data should reconnect too, as a user who pressed submit expects. The data
        is saved first: a reload starts at once (eagerly) and reads it."""
        changed = self.hass.config_entries.async_update_entry(entry, data=data)
        if not entry.update_listeners or not changed:
            self.hass.config_entries.async_schedule_reload(entry.entry_id)
        return self.async_abort(reason=reason)

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        """The engine service refused the token: ask for the one it has now."""
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        entry = self._get_reauth_entry()
        url = str(entry.data.get(CONF_ENGINE_URL) or "")
        errors: dict[str, str] = {}
        if user_input is not None:
            token = (user_input.get(CONF_ENGINE_TOKEN) or "").strip()
            error = await check_engine(self.hass, url, token or None)
            if error is None:
                data = {**entry.data, CONF_ENGINE_TOKEN: token}
                return self._update_and_reload(entry, data, "reauth_successful")
            errors["base"] = error
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=vol.Schema(
                {
                    vol.Required(CONF_ENGINE_TOKEN): TextSelector(
                        TextSelectorConfig(type=TextSelectorType.PASSWORD)
                    )
                }
            ),
            errors=errors,
            description_placeholders={"url": url},
        )

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        return ActionsOptionsFlow()

    @classmethod
    @callback
    def async_get_supported_subentry_types(
        cls, config_entry: ConfigEntry
    ) -> dict[str, type[ConfigSubentryFlow]]:
        return {SUBENTRY_STATION: StationSubentryFlow}


_TIME = r"(?:[01]?\d|2[0-3]):[0-5]\d"
SHIFTS = re.compile(rf"\s*{_TIME}(?:\s*,\s*{_TIME})*\s*")


class ActionsOptionsFlow(OptionsFlow):
    """The VLM's mapped actions: tools that call Home Assistant services, with guard rails."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        placeholders = {"error": ""}
        if user_input is not None:
            errors, placeholders["error"] = self._check(user_input)
            if not errors:
                return self.async_create_entry(data={**self.config_entry.options, **user_input})
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                self._schema(), user_input or self.config_entry.options
            ),
            errors=errors,
            description_placeholders=placeholders,
        )

    def _check(self, user_input: dict[str, Any]) -> tuple[dict[str, str], str]:
        """The form's errors by field, and the actions' parse error to show."""
        errors: dict[str, str] = {}
        detail = ""
        try:
            check_actions(user_input.get(CONF_ACTIONS, ""))
        except ValueError as exc:
            errors[CONF_ACTIONS] = "invalid_actions"
            detail = str(exc)[:300]
        notify = (user_input.get(CONF_NOTIFY) or "").strip()
        domain, _, service = notify.partition(".")
        if notify and not self.hass.services.has_service(domain, service):
            errors[CONF_NOTIFY] = "unknown_service"
        topic = user_input.get(CONF_MQTT_BASE_TOPIC, DOMAIN)
        if not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*", topic or ""):
            errors[CONF_MQTT_BASE_TOPIC] = "invalid_topic"
        elif user_input.get(CONF_MQTT_PUBLISH) and "mqtt" not in self.hass.config.components:
            errors[CONF_MQTT_PUBLISH] = "mqtt_not_set_up"
        if not SHIFTS.fullmatch(user_input.get(CONF_SHIFTS, DEFAULT_SHIFTS)):
            errors[CONF_SHIFTS] = "invalid_shifts"
        try:
            cameras = parse_cameras(user_input.get(CONF_CAMERAS, ""))
        except ValueError:
            errors[CONF_CAMERAS] = "invalid_cameras"
        else:
            if any(self.hass.states.get(c) is None for c in cameras.values()):
                errors[CONF_CAMERAS] = "invalid_cameras"
        return errors, detail

    def _schema(self) -> vol.Schema:
        schema = vol.Schema(
            {
                vol.Optional(CONF_ACTIONS, default=""): TextSelector(
                    TextSelectorConfig(multiline=True)
                ),
                vol.Optional(CONF_MQTT_PUBLISH, default=False): bool,
                vol.Optional(CONF_MQTT_BASE_TOPIC, default=DOMAIN): str,
                vol.Optional(CONF_NOTIFY): str,
                vol.Optional(CONF_SHIFTS, default=DEFAULT_SHIFTS): str,
            }
        )
        if self.config_entry.data.get(CONF_ENGINE_URL):  # remote mode: cameras feed its stations
            schema = schema.extend(
                {
                    vol.Optional(CONF_CAMERAS, default=""): TextSelector(
                        TextSelectorConfig(multiline=True)
                    ),
                    vol.Optional(CONF_INTERVAL, default=DEFAULT_INTERVAL): vol.All(
                        vol.Coerce(float), vol.Range(min=0.2, max=3600)
                    ),
                }
            )
        return schema


def check_actions(text: str) -> None:
    """Raise ValueError naming what is wrong with a YAML list of mapped actions."""
    from pydantic import ValidationError

    from edge_inspector.config import VlmConfig

    from .entry_config import parse_actions

    try:
        VlmConfig.model_validate({"actions": parse_actions(text)})
    except ValidationError as exc:
        raise ValueError(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                f"{str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            )
        ) from None


def _station_schema(new: bool) -> vol.Schema:
    fields: dict[Any, Any] = {}
    if new:
        fields[vol.Required(CONF_NAME)] = str
    fields.update(
        {
            vol.Required(CONF_CAMERA): EntitySelector(EntitySelectorConfig(domain="camera")),
            vol.Required(CONF_MODEL_PATH, default="demo"): str,
            vol.Required(CONF_DEFECTS, default="scratch, dent, crack, spot"): str,
            vol.Required(CONF_THRESHOLD, default=DEFAULT_THRESHOLD): NumberSelector(
                NumberSelectorConfig(min=0.05, max=0.95, step=0.05, mode=NumberSelectorMode.SLIDER)
            ),
            vol.Required(CONF_INTERVAL, default=DEFAULT_INTERVAL): NumberSelector(
                NumberSelectorConfig(
                    min=0.2,
                    max=3600,
                    step=0.1,
                    unit_of_measurement="s",
                    mode=NumberSelectorMode.BOX,
                )
            ),
            vol.Required("mode", default="continuous"): SelectSelector(
                SelectSelectorConfig(options=["continuous", "triggered"], translation_key="mode")
            ),
            vol.Required(CONF_IMGSZ, default=DEFAULT_IMGSZ): NumberSelector(
                NumberSelectorConfig(min=32, max=4096, step=32, mode=NumberSelectorMode.BOX)
            ),
            vol.Optional(CONF_PRODUCT): str,
            vol.Optional(CONF_LINE): str,
        }
    )
    return vol.Schema(fields)


class StationSubentryFlow(ConfigSubentryFlow):
    """Add or change a station: a camera, a model, its defect classes and rules."""

    @property
    def _is_new(self) -> bool:
        return self.source == "user"

    async def _validate(self, user_input: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        errors: dict[str, str] = {}
        classes = [c.strip() for c in str(user_input[CONF_DEFECTS]).split(",") if c.strip()]
        if not classes or not all(_CLASS.match(c) for c in classes):
            errors[CONF_DEFECTS] = "invalid_classes"
        path = model_path(user_input[CONF_MODEL_PATH].strip())
        if not await self.hass.async_add_executor_job(Path.exists, path):
            errors[CONF_MODEL_PATH] = "model_missing"
        camera = user_input[CONF_CAMERA]
        current = None if self._is_new else self._get_reconfigure_subentry().subentry_id
        for subentry in self._get_entry().subentries.values():
            if subentry.data.get(CONF_CAMERA) == camera and subentry.subentry_id != current:
                errors[CONF_CAMERA] = "camera_in_use"
        threshold = float(user_input[CONF_THRESHOLD])
        data = {
            CONF_CAMERA: camera,
            CONF_MODEL_PATH: user_input[CONF_MODEL_PATH].strip(),
            CONF_DEFECTS: dict.fromkeys(classes, threshold),
            CONF_INTERVAL: float(user_input[CONF_INTERVAL]),
            "mode": user_input["mode"],
            CONF_IMGSZ: int(user_input[CONF_IMGSZ]),
            CONF_PRODUCT: (user_input.get(CONF_PRODUCT) or "").strip(),
            CONF_LINE: (user_input.get(CONF_LINE) or "").strip(),
        }
        return data, errors

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> SubentryFlowResult:
        if self._get_entry().data.get(CONF_ENGINE_URL):
            return self.async_abort(reason="remote_engine")
        errors: dict[str, str] = {}
        if user_input is not None:
            data, errors = await self._validate(user_input)
            if not errors:
                return self.async_create_entry(
                    title=user_input[CONF_NAME], data=data, unique_id=data[CONF_CAMERA]
                )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(_station_schema(True), user_input),
            errors=errors,
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        subentry = self._get_reconfigure_subentry()
        errors: dict[str, str] = {}
        if user_input is not None:
            data, errors = await self._validate(user_input)
            if not errors:
                return self.async_update_and_abort(
                    self._get_entry(), subentry, data=data, unique_id=data[CONF_CAMERA]
                )
        current = dict(subentry.data)
        defects: dict[str, float] = current.get(CONF_DEFECTS, {})
        suggested = user_input or {
            **current,
            CONF_DEFECTS: ", ".join(defects),
            CONF_THRESHOLD: min(defects.values()) if defects else DEFAULT_THRESHOLD,
        }
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(_station_schema(False), suggested),
            errors=errors,
        )
