-- ModelDeployment: usable (approval NotRequired or Approved) is Healthy; a
-- pending approval waits for a human, shown as Suspended; a rejected or
-- suspended model is Degraded / Suspended with the reason.
local hs = { status = "Progressing", message = "Waiting for the PolicyBind operator" }
if obj.spec ~= nil and obj.spec.suspended == true then
  return { status = "Suspended", message = "Suspended by spec.suspended" }
end
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local approval = obj.status.approval
if approval == "Pending" then
  local request = obj.status.approvalRequest or "an ApprovalRequest"
  return { status = "Suspended", message = "Waiting for approval (" .. request .. ")" }
end
if approval == "Rejected" then
  return { status = "Degraded", message = "Approval rejected" }
end
if approval == "NotRequired" or approval == "Approved" then
  if obj.status.conditions ~= nil then
    for _, condition in ipairs(obj.status.conditions) do
      if condition.type == "Ready" and condition.status == "False" then
        return { status = "Degraded", message = condition.message or condition.reason or "" }
      end
    end
  end
  return { status = "Healthy", message = "Approval " .. approval }
end
return hs
