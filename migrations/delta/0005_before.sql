-- 0005 (before the definition): functions whose signature or result changed cannot be replaced in
-- place; they go first and the definition creates them again. Only functions of usersync's schema;
-- 90_install.sql then regenerates every pair and adds its new trigger (usersync_<id>_after_rekey).
drop function if exists usersync._engine_triggers(integer);
drop function if exists usersync._trigger_statement(text, text, regclass, text);
