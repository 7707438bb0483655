#!/usr/bin/env python3
"""Builds the Grafana dashboard for the realtime cluster.

The dashboard is generated so that panels stay uniform; the JSON files are committed:
  deploy/grafana/realtime-dashboard.json              (import it in Grafana, or provision it)
  deploy/helm/realtime/dashboards/realtime-dashboard.json   (the chart ships it as a sidecar ConfigMap)

  python3 deploy/grafana/build-dashboard.py           # rewrite both files
  python3 deploy/grafana/build-dashboard.py --check   # fail if either file is stale (CI)

Only the standard library is used.
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTPUTS = [
    ROOT / "deploy/grafana/realtime-dashboard.json",
    ROOT / "deploy/helm/realtime/dashboards/realtime-dashboard.json",
]

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'namespace=~"$namespace", job=~"$job", pod=~"$pod"'
RI = "$__rate_interval"


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr, legend, ref):
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "refId": ref,
    }


def timeseries(title, description, targets, unit="short", stack=False, min0=True):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if not stack else 40,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(targets)],
    }


def stat(title, description, expr, unit="short", thresholds=None, decimals=None):
    steps = thresholds or [{"color": "green", "value": None}]
    defaults = {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "color": {"mode": "thresholds"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
        "targets": [target(expr, "", "A")],
    }


def rate(metric, by=None, extra=""):
    inner = f"rate({metric}{{{SEL}{extra}}}[{RI}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q, metric, by=None):
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RI}])))"


def build():
    L = Layout()

    L.row("Overview")
    L.add(stat("Connections", "Open WebSocket connections on all selected gateways.",
               f"sum(realtime_gateway_connections{{{SEL}}})"), 4, 4)
    L.add(stat("Subscriptions", "Live subscriptions on all selected gateways.",
               f"sum(realtime_gateway_subscriptions{{{SEL}}})"), 4, 4)
    L.add(stat("Capturing workers", "Workers holding the replication slot: exactly one is healthy.",
               f"sum(realtime_capture_active{{{SEL}}})",
               thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1},
                           {"color": "red", "value": 2}]), 4, 4)
    L.add(stat("Replication lag", "Lag of the replication slot behind the WAL (capturing worker).",
               f"max(realtime_replication_lag_seconds{{{SEL}}} and on (namespace, pod) (realtime_capture_active{{{SEL}}} == 1))", unit="s",
               thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 10},
                           {"color": "red", "value": 60}]), 4, 4)
    L.add(stat("Change → send p99", "99th percentile from commit to frame queued on a gateway.",
               quantile(0.99, "realtime_change_to_send_seconds"), unit="s",
               thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.25},
                           {"color": "red", "value": 0.5}]), 4, 4)
    L.add(stat("Stream gaps (1h)", "Entries missing from the change stream in the last hour: events were lost.",
               f"sum(increase(realtime_stream_gaps_total{{{SEL}}}[1h]))",
               thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}], decimals=0), 4, 4)

    L.row("Gateway connections")
    L.add(timeseries("Connections by endpoint and auth state",
                     "realtime_gateway_connections by endpoint (websocket, graphql) and auth (pending, public, authenticated).",
                     [(f"sum by (endpoint, auth) (realtime_gateway_connections{{{SEL}}})", "{{endpoint}} / {{auth}}")],
                     stack=True), 12, 8)
    L.add(timeseries("Connections per gateway", "Open connections per gateway pod; draining gateways are marked.",
                     [(f"sum by (pod) (realtime_gateway_connections{{{SEL}}})", "{{pod}}"),
                      (f"max by (pod) (realtime_gateway_draining{{{SEL}}}) > 0", "draining {{pod}}")]), 12, 8)
    L.add(timeseries("Connections opened", "New connections per second by endpoint.",
                     [(rate("realtime_gateway_connections_opened_total", "endpoint"), "{{endpoint}}")], unit="ops"), 8, 8)
    L.add(timeseries("Connections closed by reason",
                     "Closes per second by reason (client, auth_failed, auth_timeout, heartbeat_timeout, slow_consumer, protocol_error, too_big, shutdown, io_error).",
                     [(rate("realtime_gateway_connections_closed_total", "reason"), "{{reason}}")], unit="ops",
                     stack=True), 8, 8)
    L.add(timeseries("Upgrades rejected", "Refused WebSocket upgrades per second (unauthorized, conn_limit, draining).",
                     [(rate("realtime_gateway_upgrades_rejected_total", "reason"), "{{reason}}")], unit="ops"), 8, 8)

    L.row("Subscriptions")
    L.add(timeseries("Subscriptions and distinct queries",
                     "Subscriptions on the gateways, distinct queries they map to (summed per gateway), and queries registered on the workers.",
                     [(f"sum(realtime_gateway_subscriptions{{{SEL}}})", "subscriptions"),
                      (f"sum(realtime_gateway_queries{{{SEL}}})", "distinct queries (sum over gateways)"),
                      (f"sum(realtime_registered_queries{{{SEL}}})", "queries registered on workers")]), 12, 8)
    L.add(timeseries("Registrations per gateway", "Distinct queries each gateway has registered with the workers.",
                     [(f"sum by (pod) (realtime_gateway_queries{{{SEL}}})", "{{pod}}")]), 12, 8)
    L.add(timeseries("Rights changes", "Rights changes received, connections they touched and subscriptions ended because the rights no longer allow them, per second.",
                     [(rate("realtime_gateway_rights_changes_total"), "changes"),
                      (rate("realtime_gateway_rights_connections_touched_total"), "connections touched"),
                      (rate("realtime_gateway_subscriptions_revoked_total"), "subscriptions revoked")]), 8, 8)
    L.add(timeseries("Rights pending", "Rights changes received but not yet in force, per gateway; the commit LSN of the latest.",
                     [(f"max by (pod) (realtime_gateway_rights_pending{{{SEL}}})", "pending {{pod}}"),
                      (f"max by (pod) (realtime_gateway_rights_last_lsn{{{SEL}}})", "last LSN {{pod}}")]), 8, 8)
    L.add(timeseries("Rights re-evaluation p99", "One connection's re-check and re-normalisation after a rights change.",
                     [(quantile(0.99, "realtime_gateway_rights_reevaluation_seconds"), "p99")], unit="s"), 8, 8)

    L.row("Traffic")
    L.add(timeseries("Messages in / out", "WebSocket messages per second by endpoint; received are negative.",
                     [(rate("realtime_gateway_messages_sent_total", "endpoint"), "sent {{endpoint}}"),
                      ("-" + rate("realtime_gateway_messages_received_total", "endpoint"), "received {{endpoint}}")],
                     unit="ops", min0=False), 8, 8)
    L.add(timeseries("Bytes in / out", "WebSocket payload bytes per second by endpoint; received are negative.",
                     [(rate("realtime_gateway_sent_bytes_total", "endpoint"), "sent {{endpoint}}"),
                      ("-" + rate("realtime_gateway_received_bytes_total", "endpoint"), "received {{endpoint}}")],
                     unit="Bps", min0=False), 8, 8)
    L.add(timeseries("Events delivered", "Change events queued to subscribers, and duplicates dropped by the gateways.",
                     [(rate("realtime_gateway_events_delivered_total"), "delivered"),
                      (rate("realtime_gateway_duplicate_events_total"), "duplicates dropped")], unit="ops"), 8, 8)

    L.row("Errors and backpressure")
    L.add(timeseries("Protocol errors by code", "Error frames and protocol closes per second by code.",
                     [(rate("realtime_gateway_protocol_errors_total", "code"), "{{code}}")], unit="ops",
                     stack=True), 6, 8)
    L.add(timeseries("Auth failures by method",
                     "Failed authentications per second (password, access_token, refresh_token, upgrade, rest_login).",
                     [(rate("realtime_gateway_auth_failures_total", "method"), "{{method}}")], unit="ops",
                     stack=True), 6, 8)
    L.add(timeseries("Slow-consumer disconnects", "Connections closed with 4008 per second (send queue over budget).",
                     [(rate("realtime_gateway_slow_consumer_disconnects_total", "pod"), "{{pod}}")], unit="ops"), 6, 8)
    L.add(timeseries("Send queue bytes", "Bytes queued for clients per gateway.",
                     [(f"sum by (pod) (realtime_gateway_send_queue_bytes{{{SEL}}})", "{{pod}}")], unit="bytes"), 6, 8)

    L.row("Latency")
    L.add(timeseries("Change → send latency",
                     "From the commit in PostgreSQL to the frame queued on the gateway (realtime_change_to_send_seconds).",
                     [(quantile(0.5, "realtime_change_to_send_seconds"), "p50"),
                      (quantile(0.9, "realtime_change_to_send_seconds"), "p90"),
                      (quantile(0.99, "realtime_change_to_send_seconds"), "p99")], unit="s"), 12, 8)
    L.add(timeseries("Init snapshot duration", "Time to read the initial snapshot of a subscription.",
                     [(quantile(0.5, "realtime_snapshot_seconds"), "p50"),
                      (quantile(0.99, "realtime_snapshot_seconds"), "p99")], unit="s"), 12, 8)

    L.row("Capture (PostgreSQL → Redis stream)")
    L.add(timeseries("Capture rate", "Changes and transactions captured per second.",
                     [(rate("realtime_capture_changes_total"), "changes"),
                      (rate("realtime_capture_transactions_total"), "transactions")], unit="ops"), 8, 8)
    L.add(timeseries("Capture bytes", "Bytes appended to the change stream per second.",
                     [(rate("realtime_capture_bytes_total"), "bytes")], unit="Bps"), 8, 8)
    L.add(timeseries("Capture holder", "realtime_capture_active per worker: exactly one should be 1.",
                     [(f"max by (pod) (realtime_capture_active{{{SEL}}})", "{{pod}}")]), 8, 8)
    L.add(timeseries("Replication lag (bytes)", "WAL bytes between the server's position and the slot's confirmed position.",
                     [(f"max by (pod) (realtime_replication_lag_bytes{{{SEL}}})", "{{pod}}")], unit="bytes"), 8, 8)
    L.add(timeseries("Replication lag (seconds)", "Age of the oldest change not yet captured.",
                     [(f"max by (pod) (realtime_replication_lag_seconds{{{SEL}}})", "{{pod}}")], unit="s"), 8, 8)
    L.add(timeseries("Redis append latency", "Time to append a batch to the change stream.",
                     [(quantile(0.5, "realtime_capture_append_seconds"), "p50"),
                      (quantile(0.99, "realtime_capture_append_seconds"), "p99")], unit="s"), 8, 8)
    L.add(timeseries("Stream entries appended", "Change stream entries appended, and re-sends skipped as duplicates (after a failover or reconnect).",
                     [(rate("realtime_capture_entries_total", "result"), "{{result}}")], unit="ops"), 12, 8)
    L.add(timeseries("Failures and recoveries",
                     "Capture and matching sessions that failed (and restarted), gateways re-syncing after a lost Redis subscription, workers reloading shards after the ctl stream was trimmed past them.",
                     [(rate("realtime_capture_errors_total"), "capture errors"),
                      (rate("realtime_fanout_errors_total"), "matching errors"),
                      (rate("realtime_gateway_resyncs_total"), "gateway resyncs"),
                      (rate("realtime_ctl_reloads_total"), "ctl reloads")], unit="ops"), 12, 8)

    L.row("Matching and delivery (workers)")
    L.add(timeseries("Stream backlog", "How far each worker's matching cursor is behind the stream end, in WAL bytes.",
                     [(f"max by (pod) (realtime_stream_backlog_bytes{{{SEL}}})", "{{pod}}")], unit="bytes"), 8, 8)
    L.add(timeseries("Matching time per change", "Time to match one change against the worker's shards.",
                     [(quantile(0.5, "realtime_matching_duration_seconds"), "p50"),
                      (quantile(0.99, "realtime_matching_duration_seconds"), "p99")], unit="s"), 8, 8)
    L.add(timeseries("Shards owned per worker", "Shard leases held by each worker; the sum should equal REALTIME_SHARDS.",
                     [(f"sum by (pod) (realtime_shards_owned{{{SEL}}})", "{{pod}}"),
                      (f"sum(realtime_shards_owned{{{SEL}}})", "total")]), 8, 8)
    L.add(timeseries("Shard moves", "Shard leases acquired, released and lost per second.",
                     [(rate("realtime_shard_moves_total", "kind"), "{{kind}}")], unit="ops"), 8, 8)
    L.add(timeseries("Published to gateways", "Redis messages and event frames published by the workers per second.",
                     [(rate("realtime_published_messages_total"), "messages"),
                      (rate("realtime_published_frames_total"), "frames"),
                      (rate("realtime_replays_total"), "replays")], unit="ops"), 8, 8)
    L.add(timeseries("Stream gaps", "Gaps found in the change stream (events lost) in each interval.",
                     [(f"sum(increase(realtime_stream_gaps_total{{{SEL}}}[{RI}]))", "gaps")]), 8, 8)
    L.add(timeseries("Related-item reads", "Statements reading the related items of relational queries (one per query, relation and level of a matched chunk) per second.",
                     [(rate("realtime_related_reads_total"), "statements")], unit="ops"), 8, 8)
    L.add(timeseries("Related-item read time", "Time a chunk with relational matches waits for its related items (the worker's loop waits with it).",
                     [(quantile(0.5, "realtime_related_read_seconds"), "p50"),
                      (quantile(0.99, "realtime_related_read_seconds"), "p99")], unit="s"), 8, 8)

    L.row("Redis")
    L.add(timeseries("Redis publish latency", "Time of a publish to a gateway's channel.",
                     [(quantile(0.5, "realtime_redis_publish_seconds"), "p50"),
                      (quantile(0.99, "realtime_redis_publish_seconds"), "p99")], unit="s"), 12, 8)
    L.add(timeseries("Redis publish errors", "Failed publishes per second.",
                     [(rate("realtime_redis_publish_errors_total", "pod"), "{{pod}}")], unit="ops"), 12, 8)

    L.row("Processes")
    L.add(timeseries("CPU", "CPU cores used per pod.",
                     [(f"sum by (pod) (rate(process_cpu_seconds_total{{{SEL}}}[{RI}]))", "{{pod}}")],
                     unit="short"), 8, 8)
    L.add(timeseries("Resident memory", "RSS per pod.",
                     [(f"sum by (pod) (process_resident_memory_bytes{{{SEL}}})", "{{pod}}")], unit="bytes"), 8, 8)
    L.add(timeseries("Open file descriptors", "Sockets and files per pod.",
                     [(f"sum by (pod) (process_open_fds{{{SEL}}})", "{{pod}}")]), 8, 8)
    L.add(timeseries("Restarts", "Process starts per pod in the last hour.",
                     [(f"changes(process_start_time_seconds{{{SEL}}}[1h])", "{{pod}}")]), 24, 6)
    versions = {
        "type": "table",
        "title": "Versions",
        "description": "realtime_build_info per pod.",
        "datasource": DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "targets": [{
            "datasource": DS,
            "expr": f"max by (job, pod, version) (realtime_build_info{{{SEL}}})",
            "format": "table",
            "instant": True,
            "legendFormat": "",
            "refId": "A",
        }],
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
    }
    L.add(versions, 24, 6)

    def var_query(name, label, query, multi):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": True,
            "allValue": ".*",
            "current": {},
            "hide": 0,
            "options": [],
            "regex": "",
        }

    return {
        "__inputs": [{
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "Prometheus that scrapes the gateways and fanout-workers",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": "Directus-compatible realtime cluster: gateways, fanout-workers, capture, matching and Redis.",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": L.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["realtime", "directus", "websocket"],
        "templating": {"list": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "options": [],
                "refresh": 1,
                "regex": "",
            },
            var_query("namespace", "Namespace", "label_values(realtime_build_info, namespace)", False),
            var_query("job", "Job", 'label_values(realtime_build_info{namespace=~"$namespace"}, job)', True),
            var_query("pod", "Pod", 'label_values(realtime_build_info{namespace=~"$namespace", job=~"$job"}, pod)', True),
        ]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Realtime cluster",
        "uid": "realtime-cluster",
        "version": 1,
    }


def main():
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    check = "--check" in sys.argv[1:]
    stale = []
    for out in OUTPUTS:
        if check:
            if not out.exists() or out.read_text() != text:
                stale.append(str(out.relative_to(ROOT)))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
    if stale:
        print("stale dashboard JSON (run python3 deploy/grafana/build-dashboard.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
