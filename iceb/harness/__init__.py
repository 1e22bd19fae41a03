"""The harness: brings a model, a task, an editor and metrics together for each edit count."""
from iceb.harness.run import EvalConfig, evaluate, model_banner
