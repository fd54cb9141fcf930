"""The tools the VLM may call: built-in ones and the actions mapped to automation targets."""
