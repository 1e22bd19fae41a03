"""The harness: brings a model, a task, an editor and metrics together for each edit count."""
