"""Reports: what people and pipelines see of a run. The HTML diff report, the gate status
service (Argo Rollouts, Flagger, CI) and the evidence bundle. Reads verdicts and stores through
`diff` and `schemas`; never imports `replay`."""
