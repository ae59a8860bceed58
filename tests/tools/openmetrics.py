"""Parses an OpenMetrics exposition on stdin with the prometheus_client package's parser and
prints it as JSON: {family: {"type", "unit", "samples": [[name, labels, value], ...]}}.
A text the parser rejects exits non-zero with its error."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "unit": family.unit,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(families, sys.stdout)
