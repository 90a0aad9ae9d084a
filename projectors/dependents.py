"""Views that other people built on a projection's tables, kept across a replay swap.

A view binds to the tables it reads by OID, so swapping a table in means dropping the
views on the old one. The projections' own views come back from their views.sql; views
that analysts or downstream services defined (in `projections` or any other schema) are
saved here first — definition, owner and grants, views on views included — and re-created
in the same transaction, so nobody's view silently disappears. What was granted on the
live tables and on the projections' own views is given again on the swapped-in ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from projectors.base import Connection

# GRANT statements giving again what each grantee holds on a relation (`c`, `n` in scope).
_GRANTS = """
coalesce(
    (SELECT array_agg(format('GRANT %s ON %I.%I TO %s%s', a.privilege_type,
                             n.nspname, c.relname,
                             CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                  ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                             CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END))
       FROM aclexplode(c.relacl) a),
    '{}'
)"""

TABLE_GRANTS = f"""
SELECT {_GRANTS} AS grants
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
"""

DEPENDENT_VIEWS = f"""
WITH RECURSIVE deps (oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1
      FROM pg_depend d
      JOIN pg_rewrite r ON r.oid = d.objid
      JOIN pg_class t ON t.oid = d.refobjid
      JOIN pg_namespace tn ON tn.oid = t.relnamespace
     WHERE tn.nspname = $1 AND t.relname = ANY($2::text[]) AND r.ev_class <> t.oid
    UNION ALL
    SELECT r.ev_class, deps.depth + 1
      FROM deps
      JOIN pg_depend d ON d.refobjid = deps.oid
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> deps.oid
)
SELECT format('%I.%I', n.nspname, c.relname) AS name,
       c.relkind = 'm' AS materialized,
       max(deps.depth) AS depth,
       pg_get_viewdef(c.oid) AS definition,
       quote_ident(pg_get_userbyid(c.relowner)) AS owner,
       -- Dropping it takes its owner's privileges (USAGE: inherited), creating it again
       -- CREATE on its schema, and giving it back its owner that the owner may create there.
       -- (and since PostgreSQL 16, ALTER ... OWNER TO the right to SET ROLE to the owner).
       pg_has_role(current_user, c.relowner, 'USAGE')
           AND (current_setting('server_version_num')::int < 160000
                OR pg_has_role(current_user, c.relowner, 'SET'))
           AND has_schema_privilege(current_user, n.oid, 'CREATE')
           AND has_schema_privilege(c.relowner, n.oid, 'CREATE') AS recreatable,
       {_GRANTS} AS grants
  FROM deps
  JOIN pg_class c ON c.oid = deps.oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm')
   -- Another session's temporary views cannot be made again from this one: the tables'
   -- DROP ... CASCADE ends them, as the end of that session would.
   AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
 GROUP BY c.oid, n.oid, n.nspname, c.relname, c.relkind, c.relowner, c.relacl
 ORDER BY max(deps.depth), 1
"""


@dataclass(frozen=True)
class SavedView:
    """Enough of a view to create it again exactly."""

    name: str  # schema-qualified, quoted
    materialized: bool
    depth: int  # 1: reads the tables; 2: reads a depth-1 view; ...
    definition: str
    owner: str  # quoted
    grants: tuple[str, ...]

    @property
    def kind(self) -> str:
        """VIEW or MATERIALIZED VIEW."""
        return "MATERIALIZED VIEW" if self.materialized else "VIEW"


async def save(conn: Connection, schema: str, tables: Sequence[str]) -> list[SavedView]:
    """Every view that reads `schema`.`tables`, directly or through other views, in the
    order they can be created again. Names in the definitions are schema-qualified."""
    # With only pg_catalog on the path, pg_get_viewdef qualifies every other name.
    await conn.execute("SET LOCAL search_path TO pg_catalog")
    rows = await conn.fetch(DEPENDENT_VIEWS, schema, list(tables))
    return [
        SavedView(
            r["name"],
            r["materialized"],
            r["depth"],
            r["definition"],
            r["owner"],
            tuple(r["grants"]),
        )
        for r in rows
    ]


async def not_recreatable(conn: Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """The views on `schema`.`tables` this role could not drop and create again at a swap
    (owned by a role it is not a member of, or in a schema it may not create in), each
    named with its owner: a replay refuses them before it rebuilds, not after."""
    rows = await conn.fetch(DEPENDENT_VIEWS, schema, list(tables))
    return [f"{r['name']} (owned by {r['owner']})" for r in rows if not r["recreatable"]]


async def drop(conn: Connection, views: Sequence[SavedView]) -> None:
    """Drop the saved views, deepest first."""
    for view in sorted(views, key=lambda v: -v.depth):
        await conn.execute(f"DROP {view.kind} IF EXISTS {view.name} CASCADE")


async def restore(conn: Connection, views: Sequence[SavedView]) -> list[str]:
    """Create again each saved view that does not exist now (the projections' own views
    are back already from views.sql), and give again what was granted on each, ours too
    (views.sql creates a view, not the grants someone added since); return the names
    re-created."""
    restored = []
    for view in views:
        if await conn.fetchval("SELECT to_regclass($1)", view.name) is None:
            await conn.execute(f"CREATE {view.kind} {view.name} AS {view.definition}")
            await conn.execute(f"ALTER {view.kind} {view.name} OWNER TO {view.owner}")
            restored.append(view.name)
        for grant in view.grants:
            await conn.execute(grant)
    return restored


async def table_grants(conn: Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """GRANT statements giving again, on tables of the same names, what was granted on
    `schema`.`tables` (a swap drops the live tables, and their grants with them)."""
    rows = await conn.fetch(TABLE_GRANTS, schema, list(tables))
    return [grant for r in rows for grant in r["grants"]]
