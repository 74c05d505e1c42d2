"""The planner: which backends to install on a host, where and how, and why (pure decisions).

Public API: load_recipes() -> Recipes; make_plan(profile, request, recipes) -> Plan.
provision.planner.resolve.resolve_plan(plan) checks a plan with a real resolver.
"""

from provision.planner.make import make_plan
from provision.planner.recipes import Recipes, load_recipes

__all__ = ["Recipes", "load_recipes", "make_plan"]
