-- argoproj.io Application: Argo CD no longer assesses child Applications'
-- health by default, so sync waves in an app of apps would not wait. This is
-- the check Argo CD's documentation gives for that.
local hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil then
  if obj.status.health ~= nil then
    hs.status = obj.status.health.status
    if obj.status.health.message ~= nil then
      hs.message = obj.status.health.message
    end
  end
end
return hs
