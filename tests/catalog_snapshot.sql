-- Everything pg_apikey owns in a database, one line per fact, for comparing a fresh install with
-- an upgraded one. Names and definitions only: no OIDs, no values that differ between databases.
WITH ext AS (
    SELECT e.oid, e.extnamespace AS nsp, e.extconfig, e.extcondition
      FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_apikey'
), members AS (
    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
)
SELECT fact FROM (
    -- Every member object, described.
    SELECT 'member ' || pg_catalog.pg_describe_object(m.classid, m.objid, 0) AS fact FROM members m
    UNION ALL
    -- Columns of the extension's relations.
    SELECT format('column %s.%s %s%s%s', c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                  COALESCE(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), ''))
      FROM pg_catalog.pg_class c JOIN ext ON c.relnamespace = ext.nsp
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    -- Column order matters to SELECT * and COPY.
    SELECT format('column order %s: %s', c.relname, string_agg(a.attname, ', ' ORDER BY a.attnum))
      FROM pg_catalog.pg_class c JOIN ext ON c.relnamespace = ext.nsp
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE c.relkind IN ('r', 'v', 'c')
     GROUP BY c.relname
    UNION ALL
    SELECT format('constraint %s.%s %s', c.relname, co.conname, pg_catalog.pg_get_constraintdef(co.oid))
      FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
      JOIN ext ON c.relnamespace = ext.nsp
    UNION ALL
    SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid JOIN ext ON c.relnamespace = ext.nsp
    UNION ALL
    SELECT format('trigger %s enabled=%s', pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN ext ON c.relnamespace = ext.nsp
     WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('view %s %s', c.relname, pg_catalog.pg_get_viewdef(c.oid))
      FROM pg_catalog.pg_class c JOIN ext ON c.relnamespace = ext.nsp WHERE c.relkind = 'v'
    UNION ALL
    SELECT format('relation %s kind=%s acl=%s options=%s rls=%s', c.relname, c.relkind, c.relacl, c.reloptions,
                  c.relrowsecurity)
      FROM pg_catalog.pg_class c JOIN ext ON c.relnamespace = ext.nsp
    UNION ALL
    SELECT format('policy %s.%s %s %s %s', c.relname, p.polname, p.polcmd,
                  pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
      FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid JOIN ext ON c.relnamespace = ext.nsp
    UNION ALL
    SELECT format('function %s(%s) returns %s lang=%s vol=%s strict=%s secdef=%s parallel=%s leakproof=%s cost=%s rows=%s config=%s acl=%s src=%s',
                  p.proname, pg_catalog.pg_get_function_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid),
                  l.lanname, p.provolatile, p.proisstrict, p.prosecdef, p.proparallel, p.proleakproof, p.procost,
                  p.prorows, p.proconfig, p.proacl,
                  CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END)
      FROM pg_catalog.pg_proc p JOIN ext ON p.pronamespace = ext.nsp
      JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    UNION ALL
    SELECT format('type %s category=%s preferred=%s len=%s align=%s storage=%s in=%s out=%s recv=%s send=%s',
                  t.typname, t.typcategory, t.typispreferred, t.typlen, t.typalign, t.typstorage,
                  t.typinput, t.typoutput, t.typreceive, t.typsend)
      FROM pg_catalog.pg_type t JOIN ext ON t.typnamespace = ext.nsp WHERE t.typtype IN ('b', 'c', 'd', 'e')
       AND t.typrelid = 0 OR (t.typtype = 'c' AND t.typnamespace = (SELECT nsp FROM ext)
       AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
    UNION ALL
    SELECT format('cast %s as %s context=%s method=%s', pg_catalog.format_type(c.castsource, NULL),
                  pg_catalog.format_type(c.casttarget, NULL), c.castcontext, c.castmethod)
      FROM pg_catalog.pg_cast c JOIN members m ON m.classid = 'pg_catalog.pg_cast'::regclass AND m.objid = c.oid
    UNION ALL
    SELECT format('comment %s: %s', pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
      FROM pg_catalog.pg_description d
     WHERE (d.classoid, d.objoid) IN (SELECT classid, objid FROM members)
        OR (d.classoid = 'pg_catalog.pg_class'::regclass
            AND d.objoid IN (SELECT c.oid FROM pg_catalog.pg_class c JOIN ext ON c.relnamespace = ext.nsp))
    UNION ALL
    SELECT format('schema %s owner-is-super=%s acl=%s', n.nspname,
                  (SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = n.nspowner), n.nspacl)
      FROM pg_catalog.pg_namespace n JOIN ext ON n.oid = ext.nsp
    UNION ALL
    SELECT format('dumped %s where %s', c.relname, cond)
      FROM ext, unnest(ext.extconfig, ext.extcondition) AS x(reloid, cond)
      JOIN pg_catalog.pg_class c ON c.oid = x.reloid
) facts
ORDER BY fact;
