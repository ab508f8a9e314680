-- AccessToken: Active (Secret issued, usable) is Healthy; Revoked is an
-- intended stop, shown as Suspended; Expired or Exhausted (budget used up)
-- is Degraded; Pending (not issued yet, or notBefore ahead) is Progressing.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase == "Active" then
  return { status = "Healthy", message = "Token issued in Secret " .. (obj.status.secretName or "") }
elseif phase == "Revoked" then
  return { status = "Suspended", message = "Revoked" }
elseif phase == "Expired" then
  return { status = "Degraded", message = "Expired" }
elseif phase == "Exhausted" then
  return { status = "Degraded", message = "A budget of the current period is used up" }
end
return { status = "Progressing", message = "Waiting for the operator to issue the token" }
