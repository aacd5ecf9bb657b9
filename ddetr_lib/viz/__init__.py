"""Pictures of what the models do (filled by the visualization issue)."""
