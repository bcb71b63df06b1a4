"""bb_tag: TAG task-affinity grouping as a branchbench plugin (an example to copy).

Installing this package registers the method ``tag`` through the entry point
``tag = "bb_tag:TAG"`` in the group ``branchbench.methods`` (see pyproject.toml);
branchbench finds it with no edit of its own.
"""

from bb_tag.tag import TAG

__all__ = ["TAG"]
