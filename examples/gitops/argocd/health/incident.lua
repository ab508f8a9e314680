-- Incident: open work is Degraded so it shows in the application's health;
-- Mitigated and Resolved are Healthy.
local state = "Open"
if obj.spec ~= nil and obj.spec.state ~= nil then
  state = obj.spec.state
end
if state == "Mitigated" or state == "Resolved" then
  return { status = "Healthy", message = state }
end
return { status = "Degraded", message = "Incident " .. state }
