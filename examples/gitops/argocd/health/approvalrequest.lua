-- ApprovalRequest: Pending waits for a human (Suspended); a decision, either
-- way, is Healthy (the request did its job); Expired is Degraded.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase == "Approved" or phase == "Rejected" then
  return { status = "Healthy", message = phase }
elseif phase == "Expired" then
  return { status = "Degraded", message = "Expired without a decision" }
end
return { status = "Suspended", message = "Waiting for an approver" }
